"""Attention per phase, in one place: what each phase runs on a CPU, and the runtime's own attention for serving.

| phase               | CPU (a model loaded with SDPA)       | GPU, or other attention |
|---------------------|--------------------------------------|-------------------------|
| training            | `zoo.training.attention` (packed)    | as loaded               |
| prefill and decode  | `NAME`, this module's `attention`    | as loaded               |

`use_phase` / `in_phase` switch a model; the runtime and training call nothing else. Serving is one implementation
for both of its phases because `attention` picks per call: a decode step (one query token per row) runs as two
grouped matmuls instead of PyTorch's SDPA kernel, a packed prefill pass attends prompt by prompt, and any other
call goes to SDPA itself.

On a CPU, SDPA's flash kernel spends most of its time on tiling when the query is a single token: in bf16, 16 rows
over 500 cached tokens took 4.1 ms per layer against 0.3 ms as matmuls (2 cores, measured), which made attention
over half of a batched decode step. A packed prefill pass (`zoo.serving.prefill`) passes `PIECES`: each prompt then
attends to the cached shared prefix and itself only, so all of a batch's prompts can share one pass (its projections
run as a few large matmuls) without one prompt-by-prompt mask over the whole pass. Training on a CPU runs
`zoo.training.attention`: each packed example over itself, no 4D mask (numbers at `CPU_ATTENTION`).
"""

from __future__ import annotations

import contextlib

NAME = "zoo_sdpa"
PACKED = "zoo_packed"  # zoo.training.attention.NAME (imported lazily: serving needs none of training)
PIECES = "zoo_pieces"  # keyword of a packed prefill pass: [(offset, length)] per prompt, in order
_UNHANDLED = ("softcap", "s_aux", "position_bias", "cache")  # features only SDPA's path implements


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              **kwargs):
    """transformers' attention-function contract: query (batch, heads, q, dim), key/value (batch, kv heads, k, dim)
    in; (batch, q, heads, dim) and no weights out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    pieces = kwargs.pop(PIECES, None)
    if pieces is not None:
        return _piecewise_attention(module, query, key, value, pieces, scaling), None
    if (query.shape[2] != 1 or query.device.type != "cpu" or (dropout and module.training)
            or any(kwargs.get(k) is not None for k in _UNHANDLED)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return _decode_attention(query, key, value, attention_mask, scaling), None


def _decode_attention(query, key, value, attention_mask, scaling):
    """Softmax(q k^T) v for one query token, each key/value head shared by its group of query heads (no copies
    of the cache); scores and softmax in fp32, like eager attention."""
    import torch

    batch, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    # key @ query^T, not query @ key^T: the cache is a view into a longer buffer and stays uncopied this way
    scores = torch.matmul(key, grouped.transpose(-1, -2)).transpose(-1, -2).float()  # (batch, kv, group, length)
    scores.mul_(dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        mask = attention_mask[..., -1:, -length:]  # (batch or 1, 1, 1, length): the one query row
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask.float())
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (batch, kv heads, group, dim)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous()


def _piecewise_attention(module, query, key, value, pieces, scaling):
    """SDPA for each prompt of a packed pass: its queries over the cached prefix (every key before the pass) and
    its own keys, causally. (Splitting a long prompt's queries into blocks over the keys each can see gained
    nothing in place, though SDPA's CPU kernel computes what a mask hides.)"""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cached = key.shape[2] - query.shape[2]
    outs = []
    for offset, length in pieces:
        own = slice(cached + offset, cached + offset + length)
        k, v, mask = key[:, :, own], value[:, :, own], None  # no mask: plain causal
        if cached:
            k = torch.cat([key[:, :, :cached], k], dim=2)
            v = torch.cat([value[:, :, :cached], v], dim=2)
            mask = torch.ones(length, cached + length, dtype=torch.bool, device=query.device).tril(cached)[None, None]
        outs.append(sdpa_attention_forward(module, query[:, :, offset:offset + length], k, v, mask,
                                           scaling=scaling)[0])
    return torch.cat(outs, dim=1)


def register() -> None:
    """Make `NAME` known to transformers, with SDPA's masks (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


TRAINING, SERVING = "training", "serving"
# What each phase runs on a CPU. Training: `zoo.training.attention` (each packed example over itself, scale and
# mask fused), faster than eager, which was faster than SDPA, whose CPU flash kernel is slow backwards: a training
# step of SmolLM2 NF4 in bf16 (2 shared cores, fastest of 5) took 10.2 s eager vs 23.2 s SDPA for QA rows
# (2 x 474 tokens), 0.86 s vs 1.09 s for sentiment (4 x 116); packed vs eager: docs/performance.md.
CPU_ATTENTION = {TRAINING: PACKED, SERVING: NAME}


def attention_for(model, phase: str) -> str | None:
    """The attention `model` runs in `phase`: `CPU_ATTENTION`'s on a CPU for a model loaded with SDPA, else the
    one it was loaded with (GPUs, and models without SDPA, keep their own)."""
    if phase not in CPU_ATTENTION:
        raise ValueError(f"unknown phase {phase!r}: use one of {sorted(CPU_ATTENTION)}")
    loaded = _loaded_attention(model)
    return CPU_ATTENTION[phase] if loaded == "sdpa" and model.device.type == "cpu" else loaded


def use_phase(model, phase: str) -> str | None:
    """Switch `model` to `phase`'s attention (see the table above); returns the one it ran before."""
    before = getattr(model.config, "_attn_implementation", None)
    want = attention_for(model, phase)  # remembers the loaded one before the first switch
    if want != before:
        if want == NAME:
            register()
        elif want == PACKED:
            from zoo.training.attention import register as register_packed

            register_packed()
        model.set_attn_implementation(want)
    return before


def _loaded_attention(model) -> str | None:
    """The attention `model` was loaded with, remembered on it the first time a phase switches it."""
    if not hasattr(model, "_zoo_loaded_attention"):
        model._zoo_loaded_attention = getattr(model.config, "_attn_implementation", None)
    return model._zoo_loaded_attention


@contextlib.contextmanager
def in_phase(model, phase: str):
    """`phase`'s attention for the block, then the model's previous one again (also on errors)."""
    before = use_phase(model, phase)
    try:
        yield
    finally:
        if getattr(model.config, "_attn_implementation", None) != before:
            model.set_attn_implementation(before)
