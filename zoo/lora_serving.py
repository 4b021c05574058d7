"""LoRA layers at serving time: fewer tensor ops per layer than PEFT's general forward, same sums.

Mixed-adapter batches without sub-batches: each adapter's LoRA runs over the whole batch, gated to its rows. PEFT
serves a batch whose rows use different adapters by gathering each adapter's rows (`x[indices]`), running its
LoRA on them and scattering the result back (`result[indices] += ...`), in every LoRA layer at every decode step.
On a CPU those gathers and scatters, built from Python index lists, made a decode step over three adapters cost
1.5-2x one over a single adapter (16 dialogues, measured). Here each adapter runs on all rows (a few thousand
extra multiply-adds per layer) and a cached 0/s row gate keeps its own rows, in four tensor ops.

One adapter for the whole batch: PEFT's 4-bit LoRA layer clones the base output (for autograd), scales the
adapter's full-width output and adds it out of place: three passes over every (tokens x out features) result. Here
the scaling goes onto the rank-wide intermediate and the sum is added in place (no autograd at serving time), and
a CPU decode step of a few tokens runs the adapter's matmuls in fp32 (`FEW_TOKENS`).
"""

from __future__ import annotations

import functools
import types

# A CPU's bf16 matmul costs ~25-45 us even for one token through a rank-16 adapter (oneDNN), fp32's a few us: up to
# FEW_TOKENS tokens, upcasting the adapter's two small matrices on the fly is 1.5-2x faster per layer (measured on
# 2 AVX512-BF16 cores; a one-token decode step with an adapter went from 65 to 51 ms, the base alone takes 37 ms);
# from 8 tokens on bf16 is as fast or faster.
FEW_TOKENS = 4
VARIANT_KWARGS = ("alora_offsets",)  # what PEFT's LoRA forward hands on for variants (peft's VARIANT_KWARG_KEYS)


def use_serving_forwards(peft_model) -> None:
    """Route `peft_model`'s linear LoRA layers through `serving_forward` and `gated_mixed_forward` (idempotent)."""
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if not isinstance(module, LoraLayer) or not hasattr(module, "_mixed_batch_forward"):
            continue
        if "_mixed_batch_forward" not in vars(module):
            module._mixed_batch_forward = types.MethodType(gated_mixed_forward, module)
        if hasattr(module, "in_features") and "forward" not in vars(module):
            module.forward = types.MethodType(serving_forward, module)


def serving_forward(self, x, *args, **kwargs):
    """PEFT's LoRA forward for one plain adapter without autograd, in place; anything else (training, mixed
    batches, merged or disabled adapters, variants, dropout, LoRA biases, mixed dtypes) goes to PEFT's own."""
    import torch
    import torch.nn.functional as F

    name = _single_plain_adapter(self, x) if not (args or kwargs or torch.is_grad_enabled()) else None
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    if x.numel() <= FEW_TOKENS * x.shape[-1] and x.element_size() == 2 and x.device.type == "cpu":
        x, a, b = x.float(), a.float(), b.float()  # bf16 or fp16: see FEW_TOKENS
    low = F.linear(x, a)
    scaling = self.scaling[name]
    if scaling != 1:
        low.mul_(scaling)  # rank-wide: a few hundred values per token instead of the full output width
    result += F.linear(low, b).to(result.dtype)
    return result


def _single_plain_adapter(layer, x) -> str | None:
    """The name of the one active adapter if `layer` may take the fast path with it, else None."""
    import torch

    if layer.training or layer.disable_adapters or layer.merged:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    a, b = layer.lora_A[name], layer.lora_B[name]
    if name in layer.lora_variant or type(layer.lora_dropout[name]) is not torch.nn.Identity \
            or b.bias is not None or a.bias is not None or a.weight.dtype != x.dtype or b.weight.dtype != x.dtype:
        return None
    return name


def gated_mixed_forward(self, x, *args, adapter_names: list[str], **kwargs):
    """PEFT's `_mixed_batch_forward` for plain LoRA on linear layers, same sums, no gathers; anything else (DoRA and
    other variants, embeddings, convolutions, inputs without a batch dimension) goes to PEFT's own."""
    uniq = [a for a in dict.fromkeys(adapter_names) if a in self.lora_A]
    variant = {k: kwargs.pop(k) for k in VARIANT_KWARGS if k in kwargs}  # never for the base layer
    if x.dim() < 2 or x.shape[0] != len(adapter_names) or any(a in self.lora_variant for a in uniq) \
            or not hasattr(self, "in_features") or any(v is not None for v in variant.values()):
        return type(self)._mixed_batch_forward(self, x, *args, adapter_names=adapter_names, **variant, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    for name in uniq:
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        gate = row_gate(tuple(adapter_names), name, float(self.scaling[name]), x.dim(), lora_a.weight.dtype,
                        str(x.device))
        out = lora_b(lora_a(self.lora_dropout[name](x.to(lora_a.weight.dtype)))) * gate
        result += out.to(result.dtype)
    return result


@functools.lru_cache(maxsize=256)
def row_gate(names: tuple[str, ...], name: str, scaling: float, dims: int, dtype, device: str):
    """(batch, 1, ...) tensor: `scaling` on the rows of adapter `name`, 0 elsewhere (one per batch layout)."""
    import torch

    rows = torch.tensor([scaling if n == name else 0.0 for n in names], dtype=dtype, device=device)
    return rows.view(-1, *([1] * (dims - 1)))
