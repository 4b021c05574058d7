"""The serving forwards of LoRA layers give PEFT's own sums: one adapter in place, mixed batches gated."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from zoo.serving.lora_serving import serving_forward, stacked_gate, use_serving_forwards


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(12, 10)

    def forward(self, x):
        return self.proj(x)


def _two_adapters():
    torch.manual_seed(0)
    model = get_peft_model(_Net(), LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], init_lora_weights=False),
                           adapter_name="a")
    model.add_adapter("b", LoraConfig(r=2, lora_alpha=6, target_modules=["proj"], init_lora_weights=False))
    return model.eval()


def test_gated_mixing_equals_peft_mixed_batches():
    model = _two_adapters()
    layer = model.base_model.model.proj
    x = torch.randn(5, 3, 12)
    names = ["a", "__base__", "b", "a", "b"]
    with torch.inference_mode():
        want = type(layer)._mixed_batch_forward(layer, x, adapter_names=names)
        use_serving_forwards(model)
        assert "_mixed_batch_forward" in vars(layer)
        got = layer._mixed_batch_forward(x, adapter_names=names)
        plain = layer.base_layer(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert torch.equal(got[1], plain[1])  # the base row gets no adapter at all
    assert not torch.allclose(got[0], plain[0]) and not torch.allclose(got[2], plain[2])


def test_gated_mixing_leaves_odd_calls_to_peft():
    model = _two_adapters()
    use_serving_forwards(model)
    layer = model.base_model.model.proj
    x = torch.randn(3, 12)
    with torch.inference_mode():  # alora offsets: a variant's argument, handled by PEFT's own path
        got = layer._mixed_batch_forward(x, adapter_names=["a", "b", "a"], alora_offsets=None)
        want = type(layer)._mixed_batch_forward(layer, x, adapter_names=["a", "b", "a"])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_stacked_gate_keeps_each_rows_own_adapter_slice_scaled():
    gate = stacked_gate(("a", "b", "__base__", "a"), ("a", "b"), (2, 1), (2.0, 3.0), 3, torch.float32, "cpu")
    assert gate.shape == (4, 1, 3)
    assert gate[:, 0].tolist() == [[2.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0], [2.0, 2.0, 0.0]]


def test_stacked_weights_follow_changes_to_an_adapter():
    model = _two_adapters()
    use_serving_forwards(model)
    layer = model.base_model.model.proj
    x = torch.randn(2, 12)
    names = ["a", "b"]
    with torch.inference_mode():
        before = layer._mixed_batch_forward(x, adapter_names=names)
        layer.lora_B["b"].weight.mul_(2)  # in place, as loading new weights into a loaded adapter does
        after = layer._mixed_batch_forward(x, adapter_names=names)
        want = type(layer)._mixed_batch_forward(layer, x, adapter_names=names)
    torch.testing.assert_close(after, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])
    layer.lora_A["a"].weight.data = layer.lora_A["a"].weight.data * 3  # storage swapped, as a dtype cast does
    with torch.inference_mode():
        swapped = layer._mixed_batch_forward(x, adapter_names=names)
        want = type(layer)._mixed_batch_forward(layer, x, adapter_names=names)
    torch.testing.assert_close(swapped, want, atol=1e-6, rtol=1e-5)


def test_one_adapter_in_place_equals_peft():
    model = _two_adapters()
    layer = model.base_model.model.proj
    x = torch.randn(4, 3, 12)
    for name in ("a", "b"):  # scalings 2 and 3
        model.set_adapter(name)
        with torch.inference_mode():
            want = type(layer).forward(layer, x)
            got = serving_forward(layer, x)
            plain = layer.base_layer(x)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(got, plain)


class _LinearDtypes(torch.overrides.TorchFunctionMode):
    """Records the input dtype of every `F.linear` call made inside it."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.linear:
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("tokens, lora_dtype", [(1, torch.float32), (4, torch.float32), (16, torch.bfloat16)])
def test_a_few_bf16_tokens_take_the_adapter_in_fp32(tokens, lora_dtype):
    """Decode-sized bf16 inputs on a CPU: the adapter's two matmuls run in fp32 (faster there), the base layer and
    longer inputs stay in bf16; the sum is PEFT's within bf16 rounding."""
    model = _two_adapters().to(torch.bfloat16)
    layer = model.base_model.model.proj
    x = torch.randn(tokens, 1, 12).to(torch.bfloat16)
    with torch.inference_mode():
        with _LinearDtypes() as seen:
            got = serving_forward(layer, x)
        want = type(layer).forward(layer, x)
    assert seen.dtypes == [torch.bfloat16, lora_dtype, lora_dtype]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=0.02, rtol=0.02)


def test_one_adapter_path_leaves_training_and_odd_cases_to_peft():
    model = _two_adapters()
    use_serving_forwards(model)
    layer = model.base_model.model.proj
    assert "forward" in vars(layer)
    x = torch.randn(2, 12, requires_grad=True)
    lora_a = layer.lora_A["a"].weight
    layer(x).sum().backward()  # autograd intact: PEFT's out-of-place forward under grad
    got = x.grad, lora_a.grad
    x.grad = lora_a.grad = None
    type(layer).forward(layer, x).sum().backward()
    assert torch.equal(got[0], x.grad) and torch.equal(got[1], lora_a.grad) and got[1].abs().sum() > 0
    with torch.inference_mode():
        with model.disable_adapter():
            torch.testing.assert_close(layer(x), layer.base_layer(x))
        model.base_model.set_adapter(["a", "b"])  # two active adapters: PEFT sums both
        torch.testing.assert_close(layer(x), type(layer).forward(layer, x))
