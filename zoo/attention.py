"""Attention for CPU decoding: one new token per row runs as two grouped matmuls instead of PyTorch's SDPA kernel.

On a CPU, SDPA's flash kernel spends most of its time on tiling when the query is a single token: in bf16, 16 rows
over 500 cached tokens took 4.1 ms per layer against 0.3 ms as matmuls (2 cores, measured), which made attention
over half of a batched decode step. Prefill, training and GPUs keep transformers' own SDPA, untouched.
"""

from __future__ import annotations

NAME = "zoo_sdpa"
_UNHANDLED = ("softcap", "s_aux", "position_bias", "cache")  # features only SDPA's path implements


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              **kwargs):
    """transformers' attention-function contract: query (batch, heads, q, dim), key/value (batch, kv heads, k, dim)
    in; (batch, q, heads, dim) and no weights out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

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


def register() -> None:
    """Make `NAME` known to transformers, with SDPA's masks (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_for_cpu_decoding(model) -> None:
    """Switch a model that runs SDPA on the CPU to `NAME` (models on other attention stay as they are)."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or model.device.type != "cpu":
        return
    register()
    model.set_attn_implementation(NAME)
