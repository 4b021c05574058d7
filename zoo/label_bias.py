"""A classification adapter's decision, calibrated: a logit bias per label, fitted on training rows it never saw.

A sentiment adapter trained on a few hundred SST-2 rows ranks sentences well but leans one way: its first-token
log-odds of "positive" over "negative" sit about one logit too low, so it answers "negative" for many positive
rows (SST-2 validation 0.810 -> 0.860 at 448 examples once corrected; docs/performance.md). The lean
is the same on unseen training rows as on validation rows, so it can be measured after training without
looking at any evaluation data: `fit` picks the per-label bias that answers the most unseen training rows
right (the smallest such bias, and none when nothing is gained), and serving adds it to those tokens' logits.

The bias is OpenAI's `logit_bias` (token id -> value, added at every step), which vLLM and llama.cpp's servers
take per request, so every engine can give the zoo's own answers: for a task with labels the label tokens are
the answer's first token, and later tokens (end of turn) are not affected in practice. It lives in the
adapter's manifest entry (`Entry.logit_bias`), travels with it to the Hub, and is checked when read (`check`).
"""

from __future__ import annotations

import random
import time

from zoo.errors import ZooError

CALIBRATION_ROWS = 256  # unseen training rows; +-0.03 on an accuracy of ~0.87, enough to place a 1-logit shift
MAX_BIAS = 10.0  # in logits: past this a token is always or never chosen; a larger value is refused as damage
MAX_TOKENS = 64
MIN_GAIN = 0.01  # share of the calibration rows a bias must win to be taken
_SEARCH_ROUNDS = 3


def label_token_ids(tokenizer, labels) -> list[int] | None:
    """Each label's first answer token, or None when two labels start alike (no single token decides them)."""
    ids = [tokenizer(label, add_special_tokens=False)["input_ids"][:1] for label in labels or ()]
    firsts = [i[0] for i in ids if i]
    if len(labels or ()) < 2 or len(firsts) != len(labels) or len(set(firsts)) != len(firsts):
        return None
    return firsts


def fit(logits, gold: list[int]) -> list[float]:
    """Per-label biases (the first label's 0) that make `argmax(logits + bias)` right for the most rows.

    `logits`: (rows, labels) first-token logits of the label tokens; `gold`: each row's label index. Coordinate
    search over each label's bias in turn, on the shifts where a row's answer flips; of equally good values the
    one nearest 0, and none that wins fewer than `MIN_GAIN` of the rows, so an adapter that needs no correction
    gets none."""
    import torch

    logits = torch.as_tensor(logits, dtype=torch.float64)
    target = torch.as_tensor(gold)
    bias = torch.zeros(logits.shape[1], dtype=torch.float64)
    for _ in range(_SEARCH_ROUNDS):
        for k in range(1, logits.shape[1]):
            bias[k] = _best_shift(logits, target, bias, k)
    return [round(float(b), 4) for b in bias]


def _best_shift(logits, target, bias, k: int) -> float:
    """The best value of label `k`'s bias with the others fixed (ties: nearest 0); the current value unless the
    best answers `MIN_GAIN` of the rows more (a gain of a row or two is the sample's noise, not a lean)."""
    import torch

    others = (logits + bias).clone()
    others[:, k] = float("-inf")
    rival = others.max(1).values  # what label k must beat in each row
    flips = torch.sort(rival - logits[:, k]).values  # bias at which label k starts winning each row
    cuts = torch.cat([flips[:1] - 1, (flips[1:] + flips[:-1]) / 2, flips[-1:] + 1, torch.zeros(1)])
    cuts = cuts[cuts.abs() <= MAX_BIAS]
    right = torch.tensor([_correct(logits, target, bias, k, c) for c in cuts])
    best = right == right.max()
    if right.max() - _correct(logits, target, bias, k, bias[k]) < max(2, MIN_GAIN * len(target)):
        return float(bias[k])
    return float(cuts[best][cuts[best].abs().argmin()])


def _correct(logits, target, bias, k: int, value) -> int:
    shifted = logits + bias
    shifted[:, k] = logits[:, k] + value
    return int((shifted.argmax(1) == target).sum())


def accuracy(logits, gold: list[int], bias: list[float]) -> float:
    import torch

    shifted = torch.as_tensor(logits, dtype=torch.float64) + torch.as_tensor(bias, dtype=torch.float64)
    return float((shifted.argmax(1) == torch.as_tensor(gold)).double().mean())


def as_logit_bias(token_ids: list[int], bias: list[float]) -> dict[str, float]:
    """OpenAI's `logit_bias` form ({"token id": value}); labels whose bias is 0 are left out."""
    return {str(t): b for t, b in zip(token_ids, bias) if b != 0}


def check(value, vocab_size: int | None = None, what: str = "logit_bias") -> dict[str, float]:
    """A `logit_bias` read from a manifest or a pulled entry: token ids (as strings) to bounded numbers."""
    if not isinstance(value, dict) or len(value) > MAX_TOKENS:
        raise ZooError(f"{what} must be an object of at most {MAX_TOKENS} token ids")
    for token, bias in value.items():
        if not (isinstance(token, str) and token.isdigit()) or (vocab_size and int(token) >= vocab_size):
            raise ZooError(f"{what}: {token!r} is not a token id of this base")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not abs(bias) <= MAX_BIAS:
            raise ZooError(f"{what}: the bias of token {token} must be a number within +-{MAX_BIAS:g}")
    return dict(value)


def calibration_rows(spec, used: list[dict], data_dir, n: int = CALIBRATION_ROWS, seed: int = 1) -> list[dict]:
    """`n` rows of the task's training split that the run did not train on."""
    from zoo.data import load_rows

    seen = {repr(sorted(r.items())) for r in used}
    pool = [r for r in load_rows(spec, spec.train_split, data_dir) if repr(sorted(r.items())) not in seen]
    return random.Random(seed).sample(pool, min(n, len(pool)))


def calibrate(model, tokenizer, spec, pool: list[dict], data_dir, seed: int = 1) -> dict | None:
    """After training: the adapter's first-token label logits on unseen training rows (each in a template drawn
    as in training), the fitted bias and the rows' accuracy before and after. None for a task without labels
    that single tokens decide, or when no unseen rows are left."""
    token_ids = label_token_ids(tokenizer, spec.labels)
    rows = calibration_rows(spec, pool, data_dir, seed=seed) if token_ids else []
    if not rows:
        return None
    from zoo.prompting import task_prompt_ids
    from zoo.serving.dense import dense_for_inference

    t0, rng = time.perf_counter(), random.Random(seed)
    prompts = [task_prompt_ids(tokenizer, spec, r, rng.randrange(len(spec.templates)), spec.train.max_seq_len)
               for r in rows]
    with dense_for_inference(model):  # training dropped its copies; serving prefills through them too
        logits = first_token_logits(model, prompts, token_ids, tokenizer.pad_token_id or 0)
    gold = [list(spec.labels).index(spec.references(r)[0]) for r in rows]
    bias = fit(logits, gold)
    return {"rows": len(rows), "labels": list(spec.labels), "token_ids": token_ids, "bias": bias,
            "accuracy_before": round(accuracy(logits, gold, [0.0] * len(bias)), 4),
            "accuracy_after": round(accuracy(logits, gold, bias), 4), "seconds": round(time.perf_counter() - t0, 1)}


def first_token_logits(model, prompts: list[list[int]], token_ids: list[int], pad: int, batch: int = 16):
    """(rows, labels) logits of `token_ids` as each prompt's next token, in the prompts' order: left-padded batches
    of prompts of similar length (little padding to compute), in eval mode."""
    import torch

    device = next(model.parameters()).device
    was_training, out = model.training, []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch):
                chunk = [prompts[i] for i in order[start:start + batch]]
                width = max(map(len, chunk))
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
                positions = (mask.cumsum(1) - 1).clamp_min(0)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
                out.append(logits[:, -1, token_ids].float().cpu())
    finally:
        model.train(was_training)
    logits = torch.cat(out)
    return logits[torch.tensor(order).argsort()]


def add_bias(logits, names: list[str], biases: dict[str, dict]):
    """Each row's adapter's logit bias added in place to its row of (rows, vocab) next-token logits."""
    for row, name in enumerate(names):
        for token, value in (biases.get(name) or {}).items():
            logits[row, int(token)] += value
    return logits


class AdapterLogitBias:
    """A `generate` logits processor: `add_bias` for the batch's rows (one adapter name per row)."""

    def __init__(self, names: list[str], biases: dict[str, dict]):
        self.names, self.biases = list(names), biases

    def __call__(self, input_ids, scores):
        return add_bias(scores, self.names, self.biases)
