"""Task metrics computed locally: accuracy/macro-F1, SQuAD v1.1 EM/F1 and ROUGE-1/2/L.

`evaluate.load(...)` fetches metric scripts from the Hub, which fails offline, so the three metrics are
re-stated here. SQuAD follows the official v1.1 script; ROUGE matches Google's `rouge_score` defaults as
`evaluate`'s rouge calls them (no stemming, sentence-level LCS for rougeL). Scales: accuracy and macro-F1 are
0-1, SQuAD and ROUGE are 0-100 points, as the reports expect.

Every scorer takes raw generated texts (predictions) and raises ZooError on an empty or mismatched batch,
since a score over nothing would look like a real 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from zoo.errors import ZooError



@dataclass(frozen=True)
class Metric:
    """Everything the project says about a task metric, in one place: what it reports, which number is the
    headline, how it is shown, and what the Hub calls it."""

    name: str
    primary: str
    keys: tuple[str, ...]
    scale: float  # 1.0 for 0-1 numbers, 100.0 for points
    label: str  # how reports and the demo name the headline number
    hub_task: str  # the Hub's pipeline/task type in model-index results
    higher_is_better: bool = True

    def display(self, value: float, key: str | None = None) -> str:
        """3 decimals for 0-1 numbers, 1 for points."""
        unit = 1.0 if (key or self.primary) in ("accuracy", "macro_f1") else self.scale
        return f"{value:.3f}" if unit == 1.0 else f"{value:.1f}"


METRICS = {m.name: m for m in (
    Metric("accuracy", "accuracy", ("accuracy", "macro_f1"), 1.0, "accuracy", "text-classification"),
    Metric("squad", "f1", ("exact_match", "f1"), 100.0, "SQuAD F1", "question-answering"),
    Metric("rouge", "rougeL", ("rouge1", "rouge2", "rougeL"), 100.0, "ROUGE-L", "summarization"),
)}
PRIMARY = {name: m.primary for name, m in METRICS.items()}

_QUOTES = "\"'`“”‘’«»"
_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def _check_batch(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ZooError(f"got {len(predictions)} predictions for {len(references)} references; "
                       "pass one prediction per example")
    if not predictions:
        raise ZooError("nothing to score: no predictions; evaluate on at least one example")


# ---- classification ----

def parse_label(text: str, labels: tuple[str, ...]) -> str | None:
    """The label the answer names first (whole word, any case), as spelled in `labels`; None if none.

    Whole words so "negative" is not found in "nonnegative"; longest label first so that, of two labels
    starting at the same place, the longer one wins.
    """
    if not text or not labels:
        return None
    ordered = sorted(labels, key=len, reverse=True)
    pattern = r"\b(" + "|".join(re.escape(label) for label in ordered) + r")\b"
    match = re.search(pattern, text, flags=re.IGNORECASE)
    if match is None:
        return None
    found = match.group(1).lower()
    return next(label for label in labels if label.lower() == found)


def _reference_label(reference: str | Sequence[str], labels: tuple[str, ...]) -> str:
    """A reference given as a label or as a one-item list (what `TaskSpec.references` returns)."""
    value = reference if isinstance(reference, str) else reference[0]
    for label in labels:
        if label.lower() == str(value).strip().lower():
            return label
    raise ZooError(f"reference {value!r} is not one of the labels {list(labels)}; fix the task's labels")


def classification_scores(predictions: list[str], references: list, labels) -> dict:
    """Accuracy and macro-F1 (both 0-1); a prediction that names no label counts as wrong."""
    from sklearn.metrics import f1_score  # lazy: sklearn is slow to import

    labels = tuple(labels or ())
    if not labels:
        raise ZooError("the accuracy metric needs the task's labels; set `labels` in the task")
    _check_batch(predictions, references)
    gold = [_reference_label(r, labels) for r in references]
    guessed = [parse_label(p, labels) or "" for p in predictions]  # "" is no label: never correct
    accuracy = sum(g == p for g, p in zip(gold, guessed)) / len(gold)
    macro = f1_score(gold, guessed, labels=list(labels), average="macro", zero_division=0)
    return {"accuracy": float(accuracy), "macro_f1": float(macro)}


# ---- SQuAD v1.1 ----

def clean_span(text: str) -> str:
    """The answer span in a generated text: first line, without surrounding quotes or a final period."""
    lines = (text or "").strip().splitlines()
    span = lines[0].strip().strip(_QUOTES).strip() if lines else ""
    if span.endswith("."):  # the period may sit inside or outside the quotes: '"Paris."' and '"Paris".'
        span = span[:-1].rstrip()
    return span.strip(_QUOTES).strip()


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalization: lowercase, drop punctuation, articles and extra spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 of the official script (0-1)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict:
    """Exact match and F1 (0-100), each the best over an example's references, averaged over examples."""
    _check_batch(predictions, references)
    em = f1 = 0.0
    for raw, refs in zip(predictions, references):
        pred = clean_span(raw)
        refs = [refs] if isinstance(refs, str) else list(refs)
        em += max((float(normalize_answer(pred) == normalize_answer(r)) for r in refs), default=0.0)
        f1 += max((squad_f1(pred, r) for r in refs), default=0.0)
    return {"exact_match": 100 * em / len(predictions), "f1": 100 * f1 / len(predictions)}


# ---- ROUGE ----

def rouge_tokens(text: str) -> list[str]:
    """`rouge_score`'s default tokenizer: lowercase, anything but [a-z0-9] is a space, no stemming."""
    return _NON_ALNUM.sub(" ", (text or "").lower()).split()


def _fmeasure(overlap: int, n_pred: int, n_ref: int) -> float:
    precision, recall = overlap / max(n_pred, 1), overlap / max(n_ref, 1)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def rouge_n(pred: list[str], ref: list[str], n: int) -> float:
    """ROUGE-N F-measure (0-1) on token lists, clipped n-gram counts as in `rouge_score`."""
    grams = lambda toks: Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))  # noqa: E731
    p, r = grams(pred), grams(ref)
    return _fmeasure(sum((p & r).values()), sum(p.values()), sum(r.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length; one row of the table at a time to keep memory linear."""
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def rouge_l(pred: list[str], ref: list[str]) -> float:
    """Sentence-level ROUGE-L F-measure (0-1)."""
    if not pred or not ref:
        return 0.0
    return _fmeasure(lcs_length(pred, ref), len(pred), len(ref))


def _rouge_one(prediction: str, refs: list[str]) -> dict:
    """Each ROUGE type's best F-measure over the references (as `rouge_score`'s score_multi)."""
    pred = rouge_tokens(prediction)
    toks = [rouge_tokens(r) for r in refs]
    return {"rouge1": max((rouge_n(pred, t, 1) for t in toks), default=0.0),
            "rouge2": max((rouge_n(pred, t, 2) for t in toks), default=0.0),
            "rougeL": max((rouge_l(pred, t) for t in toks), default=0.0)}


def rouge_scores(predictions: list[str], references: list[list[str]]) -> dict:
    """ROUGE-1/2/L F-measures (0-100), best reference per example, mean over examples."""
    _check_batch(predictions, references)
    totals = Counter()
    for pred, refs in zip(predictions, references):
        totals.update(_rouge_one(pred, [refs] if isinstance(refs, str) else list(refs)))
    return {key: 100 * totals[key] / len(predictions) for key in ("rouge1", "rouge2", "rougeL")}


# ---- dispatch ----

def score(metric: str, predictions, references, labels=None) -> dict:
    """Score raw generations with the task's metric ("accuracy" | "squad" | "rouge")."""
    if metric == "accuracy":
        return classification_scores(list(predictions), list(references), labels)
    if metric == "squad":
        return squad_scores(list(predictions), list(references))
    if metric == "rouge":
        return rouge_scores(list(predictions), list(references))
    raise ZooError(f"unknown metric {metric!r}; use one of {sorted(PRIMARY)}")
