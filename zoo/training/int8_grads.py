"""The input gradient of the frozen base's projections in int8, for fp32 training on a CPU.

Backward through a frozen projection computes only `grad @ W`, the gradient handed down to the layers below (the
weight gets none); in fp32 that is ~30% of a QA step, at the FMA peak of an AVX2 CPU. Here it goes through
fbgemm's int8 linear instead (SwitchBack, Wortsman et al. 2023, does the same for this matmul): each token's row
of the incoming gradient is scaled to [-1, 1] on its own (a row's gradient can be orders of magnitude smaller than
its neighbours', and fbgemm quantizes a whole input with one scale), the weight is quantized once per run, per
input channel. The forward pass stays exact, so the adapter is trained on the very base it is served on, and the
loss is the fp32 loss; only the gradient flowing down is rounded (~1.7% relative error per matmul, far below a
batch's sampling noise). Measured on a 2-core AVX2 machine: QA training 8% faster (docs/performance.md).

The memory plan takes it for fp32 training on CPUs with fbgemm's kernels when its copies (one byte per weight)
fit, after the dense copies; without dense copies it also spares backward bitsandbytes' dequantizing of the NF4
weight on every call. `ZOO_INT8_GRADS=0` keeps every gradient in fp32.
"""

from __future__ import annotations

import functools
import os
import types
import warnings

import torch
import torch.nn.functional as F


def int8_grad_bytes(model) -> int:
    """Bytes the int8 weight copies would take (0: not used for this model here)."""
    from zoo.serving.dense import _nf4_layers

    layers = _nf4_layers(model)
    if not layers or os.environ.get("ZOO_INT8_GRADS", "1") == "0" or not engine_available():
        return 0
    if model.device.type != "cpu" or any(layer.compute_dtype not in (None, torch.float32) for layer in layers):
        return 0  # bf16 training and GPUs: not measured, and their matmuls are not fp32's on a CPU
    return sum(layer.in_features * layer.out_features for layer in layers)


def engine_available() -> bool:
    """Whether this torch has fbgemm's dynamic int8 linear (x86 CPUs)."""
    engines = torch.backends.quantized.supported_engines
    return ("fbgemm" in engines or "x86" in engines) and hasattr(torch.ops.quantized, "linear_dynamic")


def use_int8_grads(model):
    """Give `model`'s NF4 layers int8 copies for backward (from their dense copies where they have them, else
    dequantized once); their forward, whichever it is, stays as it was. Returns the undo."""
    from zoo.serving.dense import _nf4_layers, dequantized

    changed = []
    for layer in _nf4_layers(model):
        weight = getattr(layer, "_zoo_dense", None)
        if weight is None and getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
            continue  # repacked for bitsandbytes' CPU kernel: no dequantizing it any more, exact gradients
        layer._zoo_int8 = pack(weight if weight is not None else dequantized(layer))
        before = vars(layer).get("forward")
        layer.forward = functools.partial(_forward, layer, before or types.MethodType(type(layer).forward, layer))
        changed.append((layer, before))

    def undo():
        for layer, before in changed:
            layer._zoo_int8 = None
            if before is None:
                del layer.forward
            else:
                layer.forward = before
    return undo


def _forward(layer, forward, x):
    """The layer's own `forward`; in training, with backward's input gradient from its int8 copy."""
    if layer.training and torch.is_grad_enabled() and x.requires_grad:
        return Int8InputGrad.apply(x, forward, layer._zoo_int8)
    return forward(x)


def pack(weight):
    """fbgemm's packed int8 form of `weight.T` (out, in) -> (in, out), one scale per input channel, so that
    `linear_dynamic(grad, packed)` is `grad @ weight`."""
    transposed = weight.float().t().contiguous()
    scales = (transposed.abs().amax(1).clamp_min(1e-12) / 127).double()
    zeros = torch.zeros(transposed.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch's quantized tensors warn that they are deprecated in favour of torchao
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_channel(transposed, scales, zeros, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(quantized, None)


def input_grad(grad, packed):
    """`grad @ W` in int8, each row on its own scale."""
    flat = grad.reshape(-1, grad.shape[-1]).float()
    scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-30)
    out = torch.ops.quantized.linear_dynamic(flat / scale, packed, True).mul_(scale)  # 7-bit inputs: AVX2-safe
    return out.reshape(*grad.shape[:-1], out.shape[-1]).to(grad.dtype)


class Int8InputGrad(torch.autograd.Function):
    """`forward(x)` of a frozen projection; backward hands down `grad @ W` from the int8 copy (`input_grad`)."""

    @staticmethod
    def forward(ctx, x, forward, packed):
        ctx.packed = packed
        return forward(x)

    @staticmethod
    def backward(ctx, grad):
        return input_grad(grad, ctx.packed), None, None
