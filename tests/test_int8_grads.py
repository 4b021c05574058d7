"""Backward's input gradients through int8 copies of the frozen weights: the forward and the loss stay exact,
the gradient handed down is rounded per token, and the planner takes it only where it was measured to pay."""

import functools

import pytest
import torch

from zoo.training import int8_grads

needs_fbgemm = pytest.mark.skipif(not int8_grads.engine_available(),
                                  reason="this torch has no fbgemm int8 linear (not an x86 CPU build)")


@needs_fbgemm
def test_each_tokens_gradient_is_rounded_on_its_own_scale():
    torch.manual_seed(0)
    weight = torch.randn(96, 64) * 0.05
    grad = torch.randn(12, 96) * torch.logspace(-9, 0, 12)[:, None]  # rows nine orders of magnitude apart
    exact = grad @ weight
    rounded = int8_grads.input_grad(grad, int8_grads.pack(weight))
    row_error = (rounded - exact).norm(dim=1) / exact.norm(dim=1)
    assert row_error.max() < 0.05  # one scale for the whole tensor would leave the small rows at zero
    assert row_error.mean() > 0  # and it is int8, not the fp32 matmul


@needs_fbgemm
def test_the_forward_is_exact_and_only_the_input_gradient_is_rounded():
    torch.manual_seed(0)
    weight = torch.randn(96, 64) * 0.05
    x = torch.randn(2, 7, 64, requires_grad=True)
    forward = functools.partial(torch.nn.functional.linear, weight=weight)
    out = int8_grads.Int8InputGrad.apply(x, forward, int8_grads.pack(weight))
    torch.testing.assert_close(out, forward(x), rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    exact = grad @ weight
    assert x.grad.shape == x.shape
    assert 0 < (x.grad - exact).norm() / exact.norm() < 0.05


def test_int8_copies_only_for_fp32_training_on_a_cpu_with_fbgemm(monkeypatch):
    class Layer:
        in_features, out_features, compute_dtype = 64, 96, torch.float32

    class Model:
        device = torch.device("cpu")

    monkeypatch.setattr("zoo.serving.dense._nf4_layers", lambda model: [Layer(), Layer()])
    monkeypatch.setattr(int8_grads, "engine_available", lambda: True)
    assert int8_grads.int8_grad_bytes(Model()) == 2 * 64 * 96  # one byte a weight
    monkeypatch.setenv("ZOO_INT8_GRADS", "0")
    assert int8_grads.int8_grad_bytes(Model()) == 0  # the user's opt-out
    monkeypatch.delenv("ZOO_INT8_GRADS")
    Layer.compute_dtype = torch.bfloat16
    assert int8_grads.int8_grad_bytes(Model()) == 0  # bf16 training: not measured
    Layer.compute_dtype, Model.device = torch.float32, torch.device("meta")
    assert int8_grads.int8_grad_bytes(Model()) == 0  # not a CPU
    Model.device = torch.device("cpu")
    monkeypatch.setattr(int8_grads, "engine_available", lambda: False)
    assert int8_grads.int8_grad_bytes(Model()) == 0
