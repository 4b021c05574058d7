"""LoRA layers while training: the adapter's sum in one `addmm`, without PEFT's full-width passes.

PEFT's LoRA forward on a 4-bit layer clones the base output (for autograd), multiplies the adapter's full-width
output by the scaling and adds it out of place; backward goes through the scaling again. For a QA step of 2,500
tokens those passes over (tokens x 1536) tensors took ~8% of a training step (fp32, 2 cores, torch.profiler).
Here the scaling goes onto the rank-wide intermediate and `addmm(base, low, B^T)` adds the adapter in the same
op as its second matmul; autograd keeps the same (rank-wide) tensors. Anything but one plain adapter (dropout,
DoRA, LoRA biases, variants, several adapters) goes to PEFT's own forward.
"""

from __future__ import annotations

import contextlib
import types


def fused_forward(self, x, *args, **kwargs):
    """`base(x) + scaling * (x A^T) B^T` as `addmm` for one plain adapter in training; else the forward before."""
    import torch.nn.functional as F

    name = _trainable_adapter(self, x) if not (args or kwargs) else None
    if name is None:
        return self._zoo_forward_before(x, *args, **kwargs)
    result = self.base_layer(x)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    low = F.linear(x.to(a.dtype), a) * self.scaling[name]  # PEFT's dtypes: the adapter's (fp32 under bf16)
    flat = result.reshape(-1, result.shape[-1]).to(low.dtype)
    out = flat.addmm(low.reshape(-1, low.shape[-1]), b.t())
    return out.reshape(result.shape).to(result.dtype)


def _trainable_adapter(layer, x) -> str | None:
    """The one active plain adapter of a layer in training (no dropout, A and B in one dtype), or None."""
    import torch

    from zoo.serving.lora_serving import plain_lora

    if not layer.training or layer.disable_adapters or layer.merged:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    no_dropout = type(layer.lora_dropout[name]) is torch.nn.Identity
    same_dtype = layer.lora_A[name].weight.dtype == layer.lora_B[name].weight.dtype
    return name if plain_lora(layer, name) and no_dropout and same_dtype else None


@contextlib.contextmanager
def fused_lora(peft_model):
    """`fused_forward` on every linear LoRA layer of `peft_model` for the block, the forwards before after."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer) and hasattr(m, "in_features")]
    before = {id(m): vars(m).get("forward") for m in layers}
    for m in layers:
        m._zoo_forward_before = before[id(m)] or types.MethodType(type(m).forward, m)
        m.forward = types.MethodType(fused_forward, m)
    try:
        yield
    finally:
        for m in layers:
            del m._zoo_forward_before
            if before[id(m)] is None:
                del m.forward
            else:
                m.forward = before[id(m)]
