"""The top decoder layer at answer positions only, while training on packed rows.

The loss reads the last hidden state only where it predicts an answer token (a QA example's ~4 of its ~320
tokens), and the top layer is the only one whose other positions nothing reads: the layer below must give every
position (the top layer's keys and values come from all of them), but the top layer itself needs its queries,
attention output, output projection and MLP only at the answer positions. So while `answer_positions_only` is
active the top layer computes keys and values for the whole row and everything else for the answer positions:
the same loss and gradients (tests/test_memory_plans.py compares every plan with the plain path), and about one
layer's forward and backward less per step.

It reads the layout of Llama-style layers (`input_layernorm`, `self_attn.{q,k,v,o}_proj` with rotary positions,
`post_attention_layernorm`, `mlp`) and the packed rows' `position_ids` (`zoo.training.attention.pieces_of`), so
it is used with the CPU's packed training attention and for the model types listed in `SUPPORTED`.
"""

from __future__ import annotations

import contextlib

SUPPORTED = ("llama",)  # others add bias terms, q/k norms or sliding windows this does not reproduce


def supported(model) -> bool:
    """Whether `answer_positions_only` knows the layout of this model's layers."""
    return getattr(model.config, "model_type", None) in SUPPORTED


@contextlib.contextmanager
def answer_positions_only(decoder, rows, cols):
    """Within the block, `decoder(...)` returns the final hidden states at (rows, cols) only, shape (1, n, hidden),
    in that order: the top layer runs its queries and MLP at those positions (module docstring)."""
    import functools

    top = decoder.layers[-1]
    saved = top.__dict__.get("forward")  # a hook's wrapper (accelerate), if any, comes back afterwards
    top.forward = functools.partial(_answer_forward, top, rows, cols)  # the instance's, over its class's
    try:
        yield
    finally:
        if saved is None:
            del top.forward
        else:
            top.forward = saved


def _answer_forward(layer, rows, cols, hidden_states, attention_mask=None, position_ids=None,
                    position_embeddings=None, **kwargs):
    """A Llama decoder layer's forward, its output only at (rows, cols): (1, n, hidden)."""
    from transformers.models.llama.modeling_llama import rotate_half

    attn = layer.self_attn
    batch, length, _ = hidden_states.shape
    normed = layer.input_layernorm(hidden_states)
    key = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    value = attn.v_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    query = attn.q_proj(normed[rows, cols]).view(len(rows), -1, attn.head_dim)  # (n, heads, dim)
    cos, sin = (t.expand(batch, -1, -1) for t in position_embeddings)
    key = key * cos[:, None] + rotate_half(key) * sin[:, None]
    query = query * cos[rows, cols][:, None] + rotate_half(query) * sin[rows, cols][:, None]
    out = _attend_selected(query, key, value, rows, cols, position_ids.expand(batch, -1), attn.scaling)
    hidden = hidden_states[rows, cols] + attn.o_proj(out.reshape(len(rows), -1))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden.unsqueeze(0)


def _attend_selected(query, key, value, rows, cols, position_ids, scale: float):
    """Query (n, heads, dim) at (rows, cols); key/value (batch, kv heads, length, dim) -> (n, heads, dim). Each
    query sees the earlier tokens of its own packed example and its example's shared prefix, as the packed
    training attention (`zoo.training.attention`) lets it."""
    import torch

    n, heads, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    out = query.new_empty(n, heads, dim)
    for b in rows.unique().tolist():
        picked = (rows == b).nonzero().flatten()
        seen = _seen(position_ids[b], cols[picked])  # (queries of this row, length)
        q = query[picked].transpose(0, 1).reshape(kv_heads, group * len(picked), dim)
        bias = torch.zeros(seen.shape, dtype=query.dtype, device=query.device).masked_fill_(~seen, float("-inf"))
        scores = torch.baddbmm(bias.repeat(group, 1).unsqueeze(0), q, key[b].transpose(1, 2), alpha=scale)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
        got = torch.bmm(probs, value[b]).reshape(heads, len(picked), dim)
        out[picked] = got.transpose(0, 1)
    return out


def _seen(positions, cols):
    """(len(cols), length) bool: which tokens of a packed row the query at each of `cols` attends to: its own
    example up to itself and the row's shared prefix (examples found as the training attention finds them)."""
    import torch

    from zoo.training.attention import pieces_of

    starts, firsts = (torch.tensor(x, device=positions.device) for x in pieces_of(positions[None], 1)[0])
    which = torch.searchsorted(starts, cols, right=True) - 1  # the example each query belongs to
    start, prefix = starts[which], firsts[which]
    keys = torch.arange(positions.shape[0], device=positions.device)
    own = (keys[None, :] >= start[:, None]) & (keys[None, :] <= cols[:, None])
    return own | (keys[None, :] < prefix[:, None])
