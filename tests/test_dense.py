"""Dense copies of NF4 weights for CPU prefill: same outputs as the NF4 kernel, only where and when they pay."""

import pytest
import torch

from zoo.serving import dense


def _nf4(base_dir, dtype=torch.float32):
    """A fresh NF4 load (not the shared cached base): no inference pass has repacked its weights yet."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=config, dtype=dtype,
                                                device_map={"": "cpu"}).eval()


@pytest.fixture()
def nf4_model(tiny_base_dir):
    return _nf4(tiny_base_dir)


def _has_fused_kernel() -> bool:
    """Whether bitsandbytes runs its fused NF4 kernel on this CPU (it needs AVX512-BF16)."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # fp32: what CPUs without bf16 compute in
def test_without_the_fused_kernel_the_dense_copy_serves_every_pass(tiny_base_dir, dtype, monkeypatch):
    """The path of CPUs without AVX512-BF16, taken on every CPU: bitsandbytes dequantizes on each call, so the
    copy serves short passes too, with the same outputs."""
    model = _nf4(tiny_base_dir, dtype)
    layers = dense._nf4_layers(model)
    for layer in layers:
        monkeypatch.setattr(layer, "support_avx512bf16_for_cpu", False)
    ids = torch.randint(5, 500, (1, dense.MIN_ROWS + 5))
    with torch.inference_mode():
        want = model(input_ids=ids).logits  # bitsandbytes' own path (no copies yet)
        size = dense.use_dense_weights(model)
        got = model(input_ids=ids).logits
        short = torch.randn(1, 2, layers[0].in_features, dtype=dtype)
        got_short, kernel_short = layers[0](short), type(layers[0]).forward(layers[0], short)
    assert size == sum(m.in_features * m.out_features * dtype.itemsize for m in layers) > 0
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    torch.testing.assert_close(got_short, kernel_short, atol=tol, rtol=tol)
    torch.testing.assert_close(got_short, torch.nn.functional.linear(short, layers[0]._zoo_dense))


@pytest.mark.skipif(not _has_fused_kernel(), reason="bitsandbytes' fused NF4 kernel needs a CPU with AVX512-BF16, "
                    "which this one lacks (the path without it: test_without_the_fused_kernel_...)")
def test_with_the_fused_kernel_dense_copies_give_its_outputs_for_long_passes_only(nf4_model, monkeypatch):
    ids = torch.randint(5, 500, (1, dense.MIN_ROWS + 5))
    size = dense.use_dense_weights(nf4_model)  # before any inference pass, as the runtime does
    layers = dense._nf4_layers(nf4_model)
    assert all(layer.support_avx512bf16_for_cpu for layer in layers)  # bitsandbytes' own choice, not forced
    with torch.inference_mode(), monkeypatch.context() as m:
        m.setattr(dense, "MIN_ROWS", 10**9)
        want_long = nf4_model(input_ids=ids).logits  # every pass through bitsandbytes' kernel
    assert size == dense.dense_weight_bytes(nf4_model) == sum(m.in_features * m.out_features * 4 for m in layers)
    with torch.inference_mode():
        got_long = nf4_model(input_ids=ids).logits
        layer = layers[0]
        short = torch.randn(1, dense.MIN_ROWS - 1, layer.in_features)
        got_short = layer(short)
        kernel_short = type(layer).forward(layer, short)
    torch.testing.assert_close(got_long, want_long, atol=5e-3, rtol=2e-2)  # the kernel rounds inputs to bf16
    assert torch.equal(got_short, kernel_short)  # a decode-sized pass keeps the NF4 kernel
    assert dense.use_dense_weights(nf4_model) == size  # idempotent


AVX2_ONLY = """
import json, sys
import torch
from zoo.base import load_base
loaded = load_base(sys.argv[1], quant=True, device="cpu")
flags = {getattr(m, "support_avx512bf16_for_cpu", None) for m in loaded.model.modules()} - {None}
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "dtype": str(loaded.compute_dtype),
                  "fused": sorted(flags)}))
"""


def test_torch_kept_to_avx2_takes_the_avx2_only_path(tiny_base_dir):
    """`ATEN_CPU_CAPABILITY=avx2` keeps torch off AVX512, as a CPU without it is: the zoo then computes in fp32
    and turns bitsandbytes' fused AVX512-BF16 kernel off (bitsandbytes reads the CPU's flags, not torch's),
    whatever this CPU has. This is how the AVX2-only kind's whole path runs on any machine."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ZOO_DTYPE"} | {"ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", AVX2_ONLY, str(tiny_base_dir)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"capability": "AVX2", "dtype": "torch.float32",
                                                               "fused": [False]}


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


def test_copies_for_a_block_of_inference_are_dropped_after_it_and_a_runtimes_stay(tiny_base_dir):
    """A training process scoring its new adapter (`zoo.label_bias`) gets copies for the block only."""
    model, served = _nf4(tiny_base_dir), _nf4(tiny_base_dir)
    layers = dense._nf4_layers(model)
    ids = torch.randint(5, 500, (1, dense.MIN_ROWS + 5))
    with dense.dense_for_inference(model), torch.inference_mode():
        assert all(layer._zoo_dense is not None for layer in layers)
        inside = model(input_ids=ids).logits
    assert all(layer._zoo_dense is None and "forward" not in vars(layer) for layer in layers)
    with torch.inference_mode():
        after = model(input_ids=ids).logits  # bitsandbytes' own path
    torch.testing.assert_close(inside, after, atol=5e-3, rtol=2e-2)  # a fused kernel rounds inputs to bf16
    dense.use_dense_weights(served)  # a runtime's copies, then a block of training with an inference block in it
    served_layers = dense._nf4_layers(served)
    undo_training = dense.use_dense_for_training(served)
    with dense.dense_for_inference(served):
        assert not any(layer._zoo_dense_training for layer in served_layers)
    assert all(layer._zoo_dense_training for layer in served_layers)
    undo_training()
    assert all(layer._zoo_dense is not None and not layer._zoo_dense_training for layer in served_layers)
