"""LoRA layers at serving time: fewer tensor ops per layer than PEFT's general forward, same sums.

Mixed-adapter batches without sub-batches: the batch's adapters run as one stacked LoRA, gated to their rows. PEFT
serves a batch whose rows use different adapters by gathering each adapter's rows (`x[indices]`), running its
LoRA on them and scattering the result back (`result[indices] += ...`), in every LoRA layer at every decode step.
On a CPU those gathers and scatters, built from Python index lists, made a decode step over three adapters cost
1.5-2x one over a single adapter (16 dialogues, measured). Here the adapters' A matrices are stacked into one (and
their B matrices side by side), every row goes through all of them (a few thousand extra multiply-adds per layer)
and a cached gate keeps, for each row, its own adapter's rank-wide slice, scaled: as many tensor ops as one
adapter, whatever the number of adapters in the batch.

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
    if not plain_lora(layer, name) or type(layer.lora_dropout[name]) is not torch.nn.Identity \
            or layer.lora_A[name].weight.dtype != x.dtype or layer.lora_B[name].weight.dtype != x.dtype:
        return None
    return name


def gated_mixed_forward(self, x, *args, adapter_names: list[str], **kwargs):
    """PEFT's `_mixed_batch_forward` for plain LoRA on linear layers at serving time, same sums, no gathers; anything
    else (training, DoRA and other variants, LoRA biases, embeddings, convolutions, inputs without a batch
    dimension) goes to PEFT's own."""
    import torch
    import torch.nn.functional as F

    uniq = tuple(a for a in dict.fromkeys(adapter_names) if a in self.lora_A)
    variant = {k: kwargs.pop(k) for k in VARIANT_KWARGS if k in kwargs}  # never for the base layer
    if x.dim() < 2 or x.shape[0] != len(adapter_names) or not hasattr(self, "in_features") or self.training \
            or torch.is_grad_enabled() or any(v is not None for v in variant.values()) \
            or not all(plain_lora(self, name) for name in uniq) \
            or len({self.lora_A[name].weight.dtype for name in uniq}) > 1:
        return type(self)._mixed_batch_forward(self, x, *args, adapter_names=adapter_names, **variant, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    if not uniq:
        return result
    a, b = _stacked(self, uniq)
    ranks = tuple(self.r[name] for name in uniq)
    scalings = tuple(float(self.scaling[name]) for name in uniq)
    gate = stacked_gate(tuple(adapter_names), uniq, ranks, scalings, x.dim(), a.dtype, str(x.device))
    low = F.linear(x.to(a.dtype), a).mul_(gate)
    result += F.linear(low, b).to(result.dtype)
    return result


def plain_lora(layer, name: str) -> bool:
    """Whether adapter `name` of `layer` is plain LoRA: no variant (DoRA is one), no biases; callers check dropout
    (off at serving time; training's fused forward needs it off too)."""
    return name not in layer.lora_variant and layer.lora_A[name].bias is None and layer.lora_B[name].bias is None


def _stacked(layer, names: tuple[str, ...]):
    """The A matrices of `names` stacked (sum of ranks x in) and their B matrices side by side (out x sum of
    ranks), kept on the layer for the last set of names asked for, rebuilt when any of the weights changes (in place,
    or its storage swapped)."""
    import torch

    weights = [(layer.lora_A[n].weight, layer.lora_B[n].weight) for n in names]
    key = (names, tuple((id(w), w.data_ptr(), w._version) for pair in weights for w in pair))
    cached = getattr(layer, "_zoo_stacked", None)
    if cached is None or cached[0] != key:
        stacked = torch.cat([a for a, _ in weights]), torch.cat([b for _, b in weights], dim=1)
        cached = layer._zoo_stacked = (key, stacked)
    return cached[1]


@functools.lru_cache(maxsize=256)
def stacked_gate(names: tuple[str, ...], order: tuple[str, ...], ranks: tuple[int, ...], scalings: tuple[float, ...],
                 dims: int, dtype, device: str):
    """(batch, 1, ..., sum of ranks): for each row, its adapter's scaling on that adapter's slice of the stacked
    rank (adapters in `order`), 0 elsewhere (all 0 for a row of none of them: the plain base)."""
    import torch

    gate = torch.zeros(len(names), sum(ranks), dtype=dtype, device=device)
    starts = [sum(ranks[:i]) for i in range(len(ranks))]
    for row, name in enumerate(names):
        if name in order:
            i = order.index(name)
            gate[row, starts[i]:starts[i] + ranks[i]] = scalings[i]
    return gate.view(len(names), *([1] * (dims - 2)), sum(ranks))
