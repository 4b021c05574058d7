"""Training attention for packed rows on a CPU: each packed example attends to itself only, in one fused op.

`zoo.train.PackedCollator` packs several examples into one row with restarting `position_ids`. Eager attention
then computes every (query, key) pair of the row and masks most of them out: for a 511-token QA row of two
examples, half of the scores belong to no example, and the scale, the mask and the softmax each make one more
pass over a (rows, heads, 511, 511) tensor. Here the pieces are found from `position_ids` (a new example starts
where the position does not follow the one before), and each piece runs as

    probs = softmax(baddbmm(causal_bias, q, k^T, alpha=scale));  out = probs @ v

with the query heads of one key/value head stacked (no `repeat_kv` copies), so the scale and the mask cost no
pass of their own and only the pieces' own (length x length) blocks are computed and kept for backward. A QA step
(fp32, 2 cores) took 11.0-11.35 s with eager attention, 10.4 s with this (docs/performance.md). Broadcasting one
(n x n) mask over heads instead (key/value repeated per query head) measured 10.0 s against 8.65 s for this
layout (one 8-step run each, every other lever on).
"""

from __future__ import annotations

import functools

NAME = "zoo_packed"
# rows up to this long run as one block with a block-diagonal mask: a sentiment batch (its shared prefix once, 8
# examples, ~290 tokens) trained at 7.9 examples/s with 512, 7.0 with 320 (longer rows went example by example)
# and 6.4 with 256 (fp32, AVX2 only; docs/performance.md)
WHOLE_ROW_MAX = 512
# an example of a long row attends in chunks of about this many queries, each to the keys up to its last one:
# forward and backward, fp32, AVX2 path, 160 / 244 / 300 / 480 tokens after a 24-token prefix: 2.5 / 5.2 / 7.8 /
# 15.9 ms whole, 1.9 / 4.0 / 5.1 / 10.9 ms in chunks of <= 128 (docs/performance.md)
CHUNK = 128


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     position_ids=None, **kwargs):
    """transformers' attention-function contract: query (batch, heads, q, dim), key/value (batch, kv heads, k, dim)
    in; (batch, q, heads, dim) and no weights out. Needs `position_ids` (packed rows) and no KV cache."""
    import torch

    if position_ids is None or query.shape[2] != key.shape[2] or (dropout and module.training):
        raise ValueError(f"{NAME} attention is for training passes over packed rows: position_ids, no cache and "
                         "no attention dropout")
    batch, heads, length, dim = query.shape
    scale = dim ** -0.5 if scaling is None else scaling
    rows = []
    for b, (starts, firsts) in enumerate(pieces_of(position_ids, batch)):
        if length <= WHOLE_ROW_MAX:  # short rows: one op per row beats one per example (per-call overhead)
            rows.append(_attend(query[b], key[b], value[b], scale, tuple(starts), tuple(firsts)))
            continue
        out = []
        for s, e, p in zip(starts, starts[1:] + [length], firsts):
            k, v = key[b, :, s:e], value[b, :, s:e]
            pieces = (0, p) if p else (0,)  # the row's shared prefix first: this example sees it, then itself
            if p:
                k, v = torch.cat([key[b, :, :p], k], dim=1), torch.cat([value[b, :, :p], v], dim=1)
            out.append(_attend_in_chunks(query[b, :, s:e], k, v, scale, pieces))
        rows.append(torch.cat(out, dim=0))
    return torch.stack(rows), None


def pieces_of(position_ids, batch: int) -> list[tuple[list[int], list[int]]]:
    """Per row, the offsets where a packed example starts (its position does not follow the previous one) and its
    first position: an example that starts at position p > 0 follows the row's shared prefix
    (`zoo.training.packing`), its first p tokens, and sees them."""
    import torch

    pos = position_ids.expand(batch, -1) if position_ids.shape[0] == 1 else position_ids
    new = torch.ones_like(pos, dtype=torch.bool)
    new[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    out = []
    for row, flags in zip(pos, new):
        starts = flags.nonzero().flatten().tolist()
        firsts = row[starts].tolist()
        if any(p > s for s, p in zip(starts, firsts)) or (firsts and firsts[0]):
            raise ValueError(f"{NAME} attention: a packed example starts at position {max(firsts)} but no shared "
                             "prefix of that length begins its row")
        out.append((starts, firsts))
    return out


def _attend_in_chunks(query, key, value, scale: float, pieces: tuple[int, ...]):
    """`_attend` for one example (after its shared prefix, if any), its queries in chunks of about `CHUNK`: a
    chunk needs only the keys up to its last query, so the scores above the causal diagonal are mostly never
    computed (a 244-token QA example's attention forward and backward: 5.2 -> 4.0 ms, fp32, AVX2 path)."""
    import torch

    n, m = query.shape[1], key.shape[1]
    chunks = -(-n // CHUNK)
    bounds = [n * i // chunks for i in range(chunks + 1)]
    return torch.cat([_attend(query[:, a:z], key[:, :m - n + z], value[:, :m - n + z], scale, pieces, pieces)
                      for a, z in zip(bounds, bounds[1:])], dim=0)


def _attend(query, key, value, scale: float, starts: tuple[int, ...], firsts: tuple[int, ...]):
    """Query (heads, n, dim), key/value (kv heads, m >= n, dim) -> (n, heads, dim), the queries being the last n
    of the m keys' tokens; each packed example (from each offset in `starts`) attends causally to itself and to
    the first `firsts[i]` tokens (its shared prefix)."""
    import torch

    heads, n, dim = query.shape
    kv_heads, m = key.shape[0], key.shape[1]
    group = heads // kv_heads
    q = query.reshape(kv_heads, group * n, dim)  # the query heads sharing a key/value head, one after the other
    bias = _causal_bias(m, n, group, starts, firsts, query.dtype, query.device)
    scores = torch.baddbmm(bias, q, key.transpose(1, 2), alpha=scale)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.bmm(probs, value)  # (kv heads, group * n, dim)
    return out.reshape(heads, n, dim).transpose(0, 1)


@functools.lru_cache(maxsize=32)  # a step has a few lengths, each layer reuses them: <= 32 x 7 MB at 768 tokens
def _causal_bias(m: int, n: int, group: int, starts: tuple[int, ...], firsts: tuple[int, ...], dtype, device):
    """(1, group * n, m) additive mask for `group` stacked query heads (the last n of m tokens): 0 where a token
    sees a key (itself and the earlier tokens of its own example, or its example's shared prefix), -inf
    elsewhere; `baddbmm` broadcasts it over the key/value heads."""
    import torch

    example = torch.zeros(m, dtype=torch.long, device=device)
    example[list(starts[1:])] = 1
    example = example.cumsum(0)
    prefix = torch.tensor(firsts, device=device)[example]  # per token: its example's shared prefix length
    keys = torch.arange(m, device=device)
    seen = ((example[:, None] == example[None, :]) & torch.ones(m, m, dtype=torch.bool, device=device).tril()
            | (keys[None, :] < prefix[:, None]))[m - n:]
    bias = torch.zeros(n, m, dtype=dtype, device=device).masked_fill_(~seen, float("-inf"))
    return bias.repeat(group, 1).unsqueeze(0)


def attention_cells(row_pieces: list[list[int]], width: int, shared: int = 0) -> int:
    """Attention scores one head computes and keeps for a batch of packed rows (the memory plan's estimate):
    a short row as a whole, a long one example by example (each row's padding is one more piece; an example
    after the first also scores the `shared` prefix tokens the row starts with). Counted as whole blocks, which
    `_attend_in_chunks` mostly halves: the estimate errs high, as the memory plan wants."""
    if width <= WHOLE_ROW_MAX:
        return len(row_pieces) * width * width
    cells = 0
    for pieces in row_pieces:
        pad = width - sum(pieces)
        cells += pieces[0] ** 2 + sum(n * (shared + n) for n in pieces[1:]) + pad ** 2
    return cells


def no_mask(*args, **kwargs):
    """The mask function registered with `NAME`: the pieces come from `position_ids`, no 4D mask is built."""
    return None


def register() -> None:
    """Make `NAME` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, no_mask)
