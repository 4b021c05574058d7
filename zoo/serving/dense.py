"""Dequantized copies of the NF4 base weights for CPU forward passes over many tokens.

bitsandbytes' fused NF4 kernel is the faster choice for a decode step (it streams a quarter of the bytes of bf16
weights: 55-57 ms per step for 16 rows against 62-63 ms dense), but for a prefill the dense bf16 matmul wins: a
layer's seven projections took 6.0 ms in NF4 vs 3.9 ms dense for 220 tokens (2 CPU cores with AVX512-BF16,
measured). So on a CPU each `Linear4bit` of a serving runtime keeps a dense copy and uses it from `MIN_ROWS` tokens
on; training, GPUs and short passes keep the NF4 kernel. (On CPUs without that kernel, bitsandbytes dequantizes
the whole weight on every call, so there the copy serves every pass.) The copies cost 2 bytes per base weight
(203 MB for SmolLM2-135M), hence a cap. They are made before the first inference pass, after which bitsandbytes
repacks its weights for its CPU kernel (and they could no longer be made from it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import types

MIN_ROWS = 32  # tokens in a forward pass from which the dense copy is used (a decode batch stays below)
DEFAULT_MAX_MB = 1024  # no copies for a base whose dense weights would take more (ZOO_DENSE_MAX_MB overrides)


def dense_weight_bytes(model) -> int:
    """Bytes the dense copies of `model`'s NF4 layers would take in its compute dtype."""
    return sum(m.in_features * m.out_features * _dtype(m).itemsize for m in _nf4_layers(model))


def dense_bytes_if_used(model) -> int:
    """What `use_dense_weights` would take on `model` (0: it would make no copies: not a CPU, over the cap)."""
    cap = float(os.environ.get("ZOO_DENSE_MAX_MB", DEFAULT_MAX_MB)) * 2**20
    size = dense_weight_bytes(model)
    return size if _nf4_layers(model) and model.device.type == "cpu" and size <= cap else 0


def use_dense_weights(model) -> int:
    """Give `model`'s NF4 layers dense copies for CPU passes of >= MIN_ROWS tokens, if their size is within the
    cap; idempotent. Returns the bytes the copies take (0: none in use)."""
    layers = _nf4_layers(model)
    if not dense_bytes_if_used(model):
        return 0
    total = 0
    for layer in layers:
        if getattr(layer, "_zoo_dense", None) is None:
            if getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
                continue  # already repacked by an inference pass: this layer keeps the NF4 kernel
            layer._zoo_dense, layer._zoo_dense_training = dequantized(layer), False
            layer.forward = types.MethodType(_forward, layer)
        total += layer._zoo_dense.numel() * layer._zoo_dense.element_size()
    return total


def use_dense_for_training(model):
    """Training passes (forward and the input gradient of backward) through dense copies too: the frozen weight
    is dequantized once per run instead of twice per step. Returns the undo: copies made here are dropped, a
    serving runtime's stay. No copies (over the cap, not a CPU, repacked layers): nothing changes."""
    return _copies_for_a_while(model, training=True)


@contextlib.contextmanager
def dense_for_inference(model):
    """Dense copies for a block of inference passes in a process that does not keep them (a training process
    scoring its new adapter, `zoo.label_bias`): long passes run faster on them, as the runtime's prefill does.
    Copies made here are dropped after the block."""
    undo = _copies_for_a_while(model, training=False)
    try:
        yield
    finally:
        undo()


def _copies_for_a_while(model, training: bool):
    """Copies on every NF4 layer that can have one, used in training passes too if `training`; the undo drops
    the ones made here and gives the others back their earlier use."""
    had = {id(m): m._zoo_dense_training for m in _nf4_layers(model) if getattr(m, "_zoo_dense", None) is not None}
    use_dense_weights(model)
    layers = [m for m in _nf4_layers(model) if getattr(m, "_zoo_dense", None) is not None]
    for layer in layers:
        layer._zoo_dense_training = training

    def undo():
        for layer in layers:
            if id(layer) in had:
                layer._zoo_dense_training = had[id(layer)]
            else:
                layer._zoo_dense, layer._zoo_dense_training = None, False
                del layer.forward  # back to the class's Linear4bit.forward
    return undo


def _forward(self, x):
    """`Linear4bit.forward`, through the dense copy for CPU inference passes of >= MIN_ROWS tokens."""
    import torch.nn.functional as F

    fused = getattr(self, "support_avx512bf16_for_cpu", False)
    min_rows = MIN_ROWS if fused else 1  # without the fused kernel, NF4 dequantizes the weight on every call
    if (self.training and not self._zoo_dense_training) or x.device.type != "cpu" \
            or x.numel() < min_rows * x.shape[-1]:
        return type(self).forward(self, x)
    bias = None if self.bias is None else self.bias.to(self._zoo_dense.dtype)
    return F.linear(x.to(self._zoo_dense.dtype), self._zoo_dense, bias).to(x.dtype)


def dequantized(layer):
    """The weight of one `Linear4bit` (not yet repacked for bitsandbytes' CPU kernel) as a dense (out, in) tensor
    in its compute dtype."""
    import bitsandbytes.functional as bnbf

    weight = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    return weight.to(_dtype(layer)).reshape(layer.out_features, layer.in_features).contiguous()


def _nf4_layers(model) -> list:
    bnb = sys.modules.get("bitsandbytes")  # not imported yet: no NF4 layer anywhere (and no import for a plain base)
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)] if bnb is not None else []


def _dtype(layer):
    import torch

    return layer.compute_dtype or torch.float32
