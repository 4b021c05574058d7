"""Mixed-adapter batches without sub-batches: each adapter's LoRA runs over the whole batch, gated to its rows.

PEFT serves a batch whose rows use different adapters by gathering each adapter's rows (`x[indices]`), running its
LoRA on them and scattering the result back (`result[indices] += ...`), in every LoRA layer at every decode step.
On a CPU those gathers and scatters, built from Python index lists, made a decode step over three adapters cost
1.5-2x one over a single adapter (16 dialogues, measured). Here each adapter runs on all rows (a few thousand
extra multiply-adds per layer) and a cached 0/s row gate keeps its own rows, in four tensor ops.
"""

from __future__ import annotations

import functools
import types

VARIANT_KWARGS = ("alora_offsets",)  # what PEFT's LoRA forward hands on for variants (peft's VARIANT_KWARG_KEYS)


def use_gated_mixing(peft_model) -> None:
    """Route the mixed-batch forward of `peft_model`'s LoRA layers through `gated_mixed_forward` (idempotent)."""
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and hasattr(module, "_mixed_batch_forward") \
                and "_mixed_batch_forward" not in vars(module):
            module._mixed_batch_forward = types.MethodType(gated_mixed_forward, module)


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
