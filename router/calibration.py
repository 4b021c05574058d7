"""Probabilities that mean what they say, and what to do with an unsure route.

`calibrate` fits one softmax temperature on the calibration split (temperature scaling: the ranking of routes
does not change, only how sure the router says it is) and then picks the threshold under which a prompt goes
to `none`, both measured on that split, never on the evaluation sets.

Policy for an unsure route (top probability under the threshold), compared by `policies`:
- `base` (chosen): the plain base answers. A task prompt sent to the base loses only the adapter's gain on
  it; an out-of-scope prompt sent to an adapter gets a task-shaped answer ("positive") to an unrelated
  request, which is worse, and the router's errors under shift are mostly task prompts it is unsure of.
- `best`: the most likely adapter answers anyway (threshold 0).
- `ask`: the user picks; no wrong answer, but a turn lost on every asked prompt (`asked` share).
"""

from __future__ import annotations

import numpy as np

from router.model import NONE, softmax

THRESHOLDS = tuple(round(x, 2) for x in np.arange(0.0, 0.91, 0.05))
BINS = 10


def fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) on `gold` indices."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(gold)), gold]))

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def reliability(proba: np.ndarray, gold: np.ndarray, bins: int = BINS) -> dict:
    """Top-route confidence vs accuracy in equal-width bins, and the expected calibration error (the
    bins' |accuracy - confidence| weighted by their share of prompts)."""
    conf, hit = proba.max(axis=1), proba.argmax(axis=1) == gold
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else conf <= hi
        if inside.any():
            acc, mean_conf = float(hit[inside].mean()), float(conf[inside].mean())
            ece += inside.mean() * abs(acc - mean_conf)
            rows.append({"lo": round(float(lo), 2), "hi": round(float(hi), 2), "n": int(inside.sum()),
                         "confidence": round(mean_conf, 4), "accuracy": round(acc, 4)})
    return {"ece": round(float(ece), 4), "bins": rows, "n": int(len(gold))}


def policies(proba: np.ndarray, gold: np.ndarray, classes: list[str], threshold: float) -> dict:
    """Accuracy of each policy for prompts whose top probability is under `threshold`."""
    top, conf = proba.argmax(axis=1), proba.max(axis=1)
    none = classes.index(NONE) if NONE in classes else -1
    unsure = conf < threshold
    best = float(np.mean(top == gold))
    base = float(np.mean(np.where(unsure, none, top) == gold))
    answered = ~unsure
    return {"best": round(best, 4), "base": round(base, 4),
            "ask": {"asked": round(float(unsure.mean()), 4),
                    "accuracy_answered": round(float(np.mean(top[answered] == gold[answered])), 4)
                    if answered.any() else None}}


def choose_threshold(proba: np.ndarray, gold: np.ndarray, classes: list[str]) -> tuple[float, dict]:
    """The threshold with the best `base`-policy accuracy (the lowest among equals), and the whole curve."""
    curve = {t: policies(proba, gold, classes, t)["base"] for t in THRESHOLDS}
    best = max(curve.values())
    return min(t for t, acc in curve.items() if acc == best), curve


def calibrate(router, prompts: list[str], labels: list[str], keep_threshold: bool = False) -> dict:
    """Fit `router.temperature_` (and `router.threshold` unless `keep_threshold`) on a calibration split;
    return what was measured, for the router's metadata."""
    classes = [str(c) for c in router.classes_]
    known = [i for i, y in enumerate(labels) if y in classes]
    gold = np.asarray([classes.index(labels[i]) for i in known])
    logits = router.logits_from_features(router.transform([prompts[i] for i in known]))
    before = reliability(softmax(logits), gold)
    router.temperature_ = fit_temperature(logits, gold)
    proba = softmax(logits / router.temperature_)
    threshold, curve = choose_threshold(proba, gold, classes)
    if not keep_threshold:
        router.threshold = threshold
    return {"prompts": len(known), "temperature": round(router.temperature_, 4), "ece_before": before["ece"],
            "ece_after": reliability(proba, gold)["ece"], "threshold": router.threshold,
            "base_accuracy_by_threshold": {str(t): a for t, a in curve.items()},
            "policies": policies(proba, gold, classes, router.threshold)}
