"""Task metrics: accuracy/macro-F1, SQuAD v1.1 EM/F1 and ROUGE-1/2/L, behind `evaluate`'s interface.

`score()` runs them through `evaluate.load()` of this project's own metric module (`zoo/evaluate_module/
zoo_metrics.py`, a local file: no Hub download, so it works offline; `evaluate.load()` of the Hub's squad or
rouge would not). The module computes with the functions below: SQuAD follows the official v1.1 script, ROUGE
is Google's `rouge-score` package (what `evaluate`'s rouge calls: default tokenizer, no stemming, sentence-level
LCS for rougeL), classification uses scikit-learn's F1. Scales: accuracy and macro-F1 are 0-1, SQuAD and ROUGE
0-100 points, as the reports expect.

Every scorer takes raw generated texts (predictions) and raises ZooError on an empty or mismatched batch,
since a score over nothing would look like a real 0. `example_scores` gives the same numbers per example, for
the bootstrap intervals of `zoo.bootstrap`.
"""

from __future__ import annotations

import functools
import re
import string
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def _gold_and_guessed(predictions: list[str], references: list, labels) -> tuple[list[str], list[str]]:
    labels = tuple(labels or ())
    if not labels:
        raise ZooError("the accuracy metric needs the task's labels; set `labels` in the task")
    _check_batch(predictions, references)
    gold = [_reference_label(r, labels) for r in references]
    return gold, [parse_label(p, labels) or "" for p in predictions]  # "" is no label: never correct


def classification_scores(predictions: list[str], references: list, labels) -> dict:
    """Accuracy and macro-F1 (both 0-1); a prediction that names no label counts as wrong."""
    from sklearn.metrics import f1_score  # lazy: sklearn is slow to import

    gold, guessed = _gold_and_guessed(predictions, references, labels)
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


def squad_examples(predictions: list[str], references: list[list[str]]) -> tuple[list[float], list[float]]:
    """Each example's exact match and F1 (0-1), the best over its references."""
    _check_batch(predictions, references)
    em, f1 = [], []
    for raw, refs in zip(predictions, references):
        pred = clean_span(raw)
        refs = [refs] if isinstance(refs, str) else list(refs)
        em.append(max((float(normalize_answer(pred) == normalize_answer(r)) for r in refs), default=0.0))
        f1.append(max((squad_f1(pred, r) for r in refs), default=0.0))
    return em, f1


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict:
    """Exact match and F1 (0-100), each the best over an example's references, averaged over examples."""
    em, f1 = squad_examples(predictions, references)
    return {"exact_match": 100 * sum(em) / len(predictions), "f1": 100 * sum(f1) / len(predictions)}


# ---- ROUGE ----

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    import sys
    from contextlib import redirect_stderr

    # rouge_score imports absl, whose log handler keeps the stderr of that moment and closes it at the process's next
    # `logging.config` call (uvicorn and Gradio make one) unless it is then the current one: under a redirected
    # stderr (pytest, Jupyter) that closed the redirect. Imported with the process's own stderr, which it never closes.
    with redirect_stderr(sys.__stderr__ or sys.stderr):
        from rouge_score import rouge_scorer  # lazy: it imports nltk

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge_examples(predictions: list[str], references: list[list[str]]) -> dict[str, list[float]]:
    """Each example's ROUGE-1/2/L F-measures (0-1), best reference per example (`score_multi`)."""
    _check_batch(predictions, references)
    out: dict[str, list[float]] = {key: [] for key in ROUGE_TYPES}
    for pred, refs in zip(predictions, references):
        best = _rouge_scorer().score_multi([refs] if isinstance(refs, str) else list(refs), pred or "")
        for key in ROUGE_TYPES:
            out[key].append(best[key].fmeasure)
    return out


def rouge_scores(predictions: list[str], references: list[list[str]]) -> dict:
    """ROUGE-1/2/L F-measures (0-100), best reference per example (`score_multi`), mean over examples."""
    per_example = rouge_examples(predictions, references)
    return {key: 100 * sum(values) / len(predictions) for key, values in per_example.items()}


# ---- dispatch ----

MODULE_PATH = Path(__file__).parent / "evaluate_module" / "zoo_metrics.py"
_MODULE_LOCK = threading.Lock()  # one loaded module per metric holds per-call state: one compute at a time


def compute(metric: str, predictions: list[str], references: list, labels=None) -> dict:
    """The metric's numbers from plain Python (what the `evaluate` module's `_compute` calls)."""
    if metric == "accuracy":
        return classification_scores(list(predictions), list(references), labels)
    if metric == "squad":
        return squad_scores(list(predictions), list(references))
    if metric == "rouge":
        return rouge_scores(list(predictions), list(references))
    raise ZooError(f"unknown metric {metric!r}; use one of {sorted(METRICS)}")


@functools.lru_cache(maxsize=None)
def evaluation_module(metric: str):
    """`evaluate.load()` of the local module, once per process (the import of `evaluate` takes seconds)."""
    import evaluate

    return evaluate.load(str(MODULE_PATH), metric, keep_in_memory=True)


def _text(value) -> str:
    """Text Arrow can store: lone surrogates (undecodable input) become U+FFFD."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


def _plain_batch(metric: str, predictions, references) -> tuple[list[str], list[list[str]]]:
    """Texts as `evaluate` stores them, one list of references per example, checked before any scoring."""
    if metric not in METRICS:
        raise ZooError(f"unknown metric {metric!r}; use one of {sorted(METRICS)}")
    predictions = [_text(p) for p in predictions]
    references = [[_text(r)] if isinstance(r, str) else [_text(x) for x in r] for r in references]
    _check_batch(predictions, references)  # before evaluate, whose own errors are less clear
    return predictions, references


def score(metric: str, predictions, references, labels=None) -> dict:
    """Score raw generations with the task's metric ("accuracy" | "squad" | "rouge") through `evaluate`."""
    predictions, references = _plain_batch(metric, predictions, references)
    extra = {"labels": list(labels)} if metric == "accuracy" and labels else {}
    with _MODULE_LOCK:
        return evaluation_module(metric).compute(predictions=predictions, references=references, **extra)


# ---- per example, for bootstrap intervals ----

def example_scores(metric: str, predictions, references, labels=None) -> dict:
    """What each of the metric's numbers is computed from, one row per example (numpy, shape (n, k)); the number
    is `from_means(key, column means)`: the mean itself for accuracy, EM, F1 and ROUGE (on the metric's scale),
    macro-F1 from each label's true-positive, false-positive and false-negative rates. A bootstrap resamples rows."""
    import numpy as np

    predictions, references = _plain_batch(metric, predictions, references)
    if metric == "accuracy":
        gold, guessed = _gold_and_guessed(predictions, references, labels)
        parts = {"accuracy": [g == p for g, p in zip(gold, guessed)],
                 "macro_f1": [[(g == lab) & (p == lab), (p == lab) & (g != lab), (g == lab) & (p != lab)]
                              for g, p in zip(gold, guessed) for lab in labels]}
    elif metric == "squad":
        parts = dict(zip(("exact_match", "f1"), squad_examples(predictions, references)))
    else:
        parts = rouge_examples(predictions, references)
    unit = METRICS[metric].scale if metric != "accuracy" else 1.0
    return {key: unit * np.asarray(v, dtype=float).reshape(len(predictions), -1) for key, v in parts.items()}


def from_means(key: str, means):
    """A number from the column means of its `example_scores` (the last axis; any leading axes are resamples)."""
    import numpy as np

    if key != "macro_f1":
        return means[..., 0]
    per_label = means.reshape(*means.shape[:-1], -1, 3)
    tp, fp, fn = per_label[..., 0], per_label[..., 1], per_label[..., 2]
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)  # no gold, no guess: 0, as sklearn
    return f1.mean(axis=-1)
