"""Packing a batch of training examples into a few rows of tokens, and the step the memory plan sizes for.

Examples are packed back to back with restarting `position_ids`: no pad tokens inside a row, no 2D mask. With
`share_prefix` (the CPU's training attention, `zoo.training.attention`, reads it) the prefix every example of the
batch shares (the chat template's system prompt: 24 of a sentiment example's ~57 tokens) runs once: the batch is
one row, the prefix first, then each example's own tokens with their positions continuing from it. The attention
lets each see that prefix and itself, the computation each would have alone, so the loss and the gradients are
those of the unshared rows (`tests/test_memory_plans.py`), for ~40% fewer tokens on sentiment and no padding.
One row is no dearer in attention: past `WHOLE_ROW_MAX` tokens it goes example by example.
"""

from __future__ import annotations



def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: group example indices into rows of at most `capacity` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows


def shared_length(features: list[dict]) -> int:
    """Tokens every example of a batch starts with (`zoo.serving.prefill.shared_prefix`, which prefill shares the
    same way), short of each one's last prompt token (the position that predicts its first answer token stays its
    own); 0 when too short to be worth it or for a single example."""
    from zoo.serving.prefill import MIN_SHARED, shared_prefix

    length = min(shared_prefix([f["input_ids"] for f in features]), min(f["n_prompt"] for f in features) - 1)
    return length if length >= MIN_SHARED else 0


class PackedCollator:
    """Packs a batch of examples into a few rows of about `row_tokens` tokens; positions restart per example.

    With `attention_mask=None` and restarting `position_ids`, transformers builds a block-diagonal causal mask,
    so packed examples never see each other. Rows stay short because attention cost grows with the square of
    the row length (one 2,000-token row spends more on masked-out attention than on the whole MLP). The few
    pad tokens that even the rows out form a block of their own, and no logits are computed for them:
    `rows`/`cols` index only the positions that predict answer tokens. `share_prefix`: see the module docstring
    (only for an attention that reads it: transformers' own would hide the prefix from all but the first).
    """

    def __init__(self, pad_id: int = 0, row_tokens: int = 512, share_prefix: bool = False):
        self.pad_id = pad_id
        self.row_tokens = row_tokens
        self.share_prefix = share_prefix
        self.batches: list[tuple[int, int]] = []  # (real examples, tokens) per batch made, for throughput

    def trained(self, batches: int) -> tuple[int, int]:
        """Examples and tokens (no padding) in the first `batches` batches: the data loader makes one batch ahead,
        which a run stopped early (a budget, max_steps) never trains on."""
        return sum(b[0] for b in self.batches[:batches]), sum(b[1] for b in self.batches[:batches])

    def __call__(self, features: list[dict]) -> dict:
        import torch

        self.batches.append((len(features), sum(len(f["input_ids"]) for f in features)))
        shared = shared_length(features) if self.share_prefix else 0
        prefix = list(features[0]["input_ids"][:shared])
        own = [f["input_ids"][shared:] for f in features]
        groups = ([list(range(len(own)))] if shared  # one row: one prefix, no padding
                  else pack_rows([len(s) for s in own], max(self.row_tokens, max(len(s) for s in own))))
        width = shared + max(sum(len(own[i]) for i in g) for g in groups)
        ids, pos, rows, cols, targets = [], [], [], [], []
        for r, group in enumerate(groups):
            row_ids, row_pos = list(prefix), list(range(shared))
            for i in group:
                seq, p = own[i], features[i]["n_prompt"] - shared
                cols += range(len(row_ids) + p - 1, len(row_ids) + len(seq) - 1)
                rows += [r] * (len(seq) - p)
                targets += seq[p:]
                row_ids += seq
                row_pos += range(shared, shared + len(seq))
            pad = width - len(row_ids)
            ids.append(row_ids + [self.pad_id] * pad)
            pos.append(row_pos + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids),
            "position_ids": torch.tensor(pos),
            "rows": torch.tensor(rows),
            "cols": torch.tensor(cols),
            "targets": torch.tensor(targets),
        }


def planning_step(examples: list[dict], batch_size: int, row_tokens: int, shared: int = 0) -> tuple[int, int]:
    """Tokens and attention cells (per head) of a batch of examples of the 90th-percentile length, packed as the
    collator packs (`shared`: the prefix it puts once per row): the steps the memory estimate was fitted on
    (peaks over whole runs). Planning for the longest examples overestimated a QA run's peak 2.3x and
    checkpointed layers for nothing."""
    from zoo.training.attention import attention_cells

    ranked = sorted((len(e["input_ids"]) for e in examples), reverse=True) or [1]
    own = max(1, ranked[len(ranked) // 10] - shared)
    lengths = [own] * batch_size
    groups = [list(range(batch_size))] if shared else pack_rows(lengths, max(row_tokens, own))
    width = shared + max(sum(lengths[i] for i in g) for g in groups)
    pieces = [[shared + own] + [own] * (len(g) - 1) for g in groups]  # what attends together
    cells = attention_cells(pieces, width, shared)
    return len(groups) * width, cells
