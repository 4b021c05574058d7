"""Dense copies of NF4 weights for CPU prefill: same outputs as the NF4 kernel, only where and when they pay."""

import pytest
import torch

from zoo.serving import dense


@pytest.fixture()
def nf4_model(tiny_base_dir):
    """A fresh NF4 load (not the shared cached base): no inference pass has repacked its weights yet."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(tiny_base_dir, quantization_config=config,
                                                device_map={"": "cpu"}).eval()


def test_dense_copies_give_the_nf4_outputs_for_long_passes_only(nf4_model, monkeypatch):
    ids = torch.randint(5, 500, (1, dense.MIN_ROWS + 5))
    size = dense.use_dense_weights(nf4_model)  # before any inference pass, as the runtime does
    layers = dense._nf4_layers(nf4_model)
    with torch.inference_mode(), monkeypatch.context() as m:
        m.setattr(dense, "MIN_ROWS", 10**9)
        for layer in layers:
            m.setattr(layer, "support_avx512bf16_for_cpu", True)
        want_long = nf4_model(input_ids=ids).logits  # every pass through bitsandbytes' kernel
    assert size == dense.dense_weight_bytes(nf4_model) == sum(m.in_features * m.out_features * 4 for m in layers)
    for layer in layers:
        monkeypatch.setattr(layer, "support_avx512bf16_for_cpu", True)  # as on CPUs with its fused kernel
    with torch.inference_mode():
        got_long = nf4_model(input_ids=ids).logits
        layer = layers[0]
        short = torch.randn(1, dense.MIN_ROWS - 1, layer.in_features)
        got_short = layer(short)
        kernel_short = type(layer).forward(layer, short)
    torch.testing.assert_close(got_long, want_long, atol=5e-3, rtol=2e-2)  # the kernel rounds inputs to bf16
    assert torch.equal(got_short, kernel_short)  # a decode-sized pass keeps the NF4 kernel
    assert dense.use_dense_weights(nf4_model) == size  # idempotent
    monkeypatch.setattr(layer, "support_avx512bf16_for_cpu", False)  # no fused kernel: the copy serves all passes
    with torch.inference_mode():
        torch.testing.assert_close(layer(short), torch.nn.functional.linear(short, layer._zoo_dense))


def test_dense_copy_is_the_dequantized_weight(nf4_model):
    layer = dense._nf4_layers(nf4_model)[0]
    copy = dense.dequantized(layer)
    eye = torch.eye(layer.in_features)
    with torch.inference_mode():
        through_kernel = type(layer).forward(layer, eye)  # rows of W^T, computed by bitsandbytes itself
    assert copy.shape == (layer.out_features, layer.in_features)
    torch.testing.assert_close(copy.T, through_kernel, atol=1e-3, rtol=2e-2)  # its output is rounded to bf16


def test_no_dense_copies_over_the_cap_or_in_training(nf4_model, monkeypatch):
    monkeypatch.setenv("ZOO_DENSE_MAX_MB", "0")
    assert dense.use_dense_weights(nf4_model) == 0
    assert all("forward" not in vars(m) for m in dense._nf4_layers(nf4_model))
    monkeypatch.delenv("ZOO_DENSE_MAX_MB")
    dense.use_dense_weights(nf4_model)
    layer = dense._nf4_layers(nf4_model)[0]
    layer.train()
    x = torch.randn(1, dense.MIN_ROWS + 1, layer.in_features)
    assert torch.equal(layer(x), type(layer).forward(layer, x))
