"""`reports/router.{md,json}` + `router_confusion.png` + `router_reliability.png`: how well the zoo's router
routes prompts it never saw (from the training generator and from the separately written one), how far its
probabilities can be trusted, what its mistakes cost (routing regret, when measured) and how long it takes per
prompt on one core."""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import numpy as np

from router.model import NONE

BAR_DIFFERENT = 0.98
BAR_NONE_RECALL = 0.95
BAR_REGRET = 0.01
BAR_P50_MS = 30.0
LATENCY_PROMPTS = 200
GROUPS = {"same-generator": ("validation/same-generator", "none/out-of-scope"),
          "different-generator": ("validation/different-generator", "none/different-generator")}


def group_of(name: str) -> str | None:
    """The held-out group a set belongs to (None: shown for context only: templates, out-of-domain rows)."""
    return next((g for g, ends in GROUPS.items() if name.endswith(ends)), None)


def write_router_report(zoo, data_dir=None, n: int = 100, seed: int = 1, regret: dict | None = None) -> dict:
    """Evaluate the zoo's router, write the report files and return the numbers. `regret`: the result of
    `router.regret.routing_regret` (it needs a Runtime, so the caller measures it)."""
    from router import load_router
    from router.api import _task_specs
    from router.data import eval_sets
    from router.report_files import write_files

    router = load_router(zoo)
    specs = _task_specs(zoo, [str(r) for r in router.classes_ if str(r) != NONE], explicit=True)
    sets = eval_sets(specs, data_dir=data_dir, n=n, seed=seed)
    results = {name: score_set(router, prompts, gold) for name, (prompts, gold) in sets.items()}
    result = summarize(router, results)
    result["calibration"] = calibration_summary(router, results, _training_meta(zoo).get("calibration"))
    sample = [p for prompts, _ in sets.values() for p in prompts[:: max(1, len(prompts) // 25)]]
    result["latency"] = measure_latency(router, sample[:LATENCY_PROMPTS])
    if regret:
        result["regret"] = regret
    result["bars"] = bars(result)
    write_files(zoo.reports_dir, result)
    return result


def _training_meta(zoo) -> dict:
    from router.api import META_FILE

    return json.loads((zoo.router_dir / META_FILE).read_text(encoding="utf-8")).get("training", {})


def score_set(router, prompts: list[str], gold: list[str]) -> dict:
    proba = router.predict_proba(prompts)
    pred = router.decide(proba)
    misses = [{"prompt": _short(p), "gold": g, "route": r, "p": round(float(row.max()), 3)}
              for p, g, r, row in zip(prompts, gold, pred, proba) if r != g]
    return {"n": len(prompts), "accuracy": float(np.mean([p == g for p, g in zip(pred, gold)])),
            "pred": pred, "gold": gold, "proba": proba, "misses": misses[:8]}


def _pooled(results: dict, names: list[str]) -> dict:
    """Accuracy over the named sets together, overall and per gold route."""
    gold = [g for k in names for g in results[k]["gold"]]
    pred = [p for k in names for p in results[k]["pred"]]
    per_route = {r: float(np.mean([p == g for p, g in zip(pred, gold) if g == r])) for r in sorted(set(gold))}
    return {"n": len(gold), "accuracy": float(np.mean([p == g for p, g in zip(pred, gold)])) if gold else 0.0,
            "per_route": per_route}


def summarize(router, results: dict) -> dict:
    routes = [str(c) for c in router.classes_]
    different = [k for k in results if group_of(k) == "different-generator"]
    confusion = Counter((g, p) for k in different for g, p in zip(results[k]["gold"], results[k]["pred"]))
    return {
        "routes": routes, "threshold": router.threshold, "params": router.get_params(),
        "temperature": float(getattr(router, "temperature_", 1.0)),
        "groups": {g: _pooled(results, [k for k in results if group_of(k) == g]) for g in GROUPS},
        "sets": {k: {"n": v["n"], "accuracy": v["accuracy"], "group": group_of(k), "misses": v["misses"]}
                 for k, v in results.items()},
        "confusion": {"routes": routes, "matrix": [[confusion[(g, p)] for p in routes] for g in routes]},
    }


def calibration_summary(router, results: dict, fitted: dict | None) -> dict:
    """Reliability (calibrated and at temperature 1) and the unsure-route policies on each held-out group."""
    from router.calibration import policies, reliability

    out = {"temperature": float(getattr(router, "temperature_", 1.0)), "threshold": router.threshold,
           "calibration_split": fitted or {}}
    classes = [str(c) for c in router.classes_]
    t = out["temperature"]
    for group in GROUPS:
        names = [k for k in results if group_of(k) == group]
        proba = np.vstack([results[k]["proba"] for k in names])
        gold = np.asarray([classes.index(g) for k in names for g in results[k]["gold"]])
        raw = _softmax_power(proba, t)
        out[group] = {"calibrated": reliability(proba, gold), "ece_uncalibrated": reliability(raw, gold)["ece"],
                      "policies": policies(proba, gold, classes, router.threshold)}
    return out


def _softmax_power(proba: np.ndarray, t: float) -> np.ndarray:
    """softmax(z / t) -> softmax(z): raise to the power t and renormalise (the uncalibrated probabilities)."""
    p = np.power(np.clip(proba, 1e-30, 1.0), t)
    return p / p.sum(axis=1, keepdims=True)


def measure_latency(router, prompts: list[str]) -> dict:
    """Per-prompt time, one prompt at a time on one CPU core: the classifier with its features (embedding
    model + n-grams + linear layer + softmax), and the embedding model alone."""
    import torch

    from router.features import forget_embeddings

    threads, affinity = torch.get_num_threads(), _pin_one_core()
    torch.set_num_threads(1)
    try:
        router.route(prompts[:2])  # load the embedding model, warm caches
        embed_ms, total_ms = [], []
        for p in prompts:
            forget_embeddings()
            t0 = time.perf_counter()
            emb = router.embed([p])
            t1 = time.perf_counter()
            router.decide(router.proba_from_features(router.transform([p], embeddings=emb)))
            embed_ms.append((t1 - t0) * 1e3)
            total_ms.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(threads)
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    return {"prompts": len(prompts), "cores": 1, "load_average": round(os.getloadavg()[0], 2),
            "classifier_ms": _pcts(total_ms),
            "embedding_ms": _pcts(embed_ms) if router.features != "ngrams" else None,
            "embedding_backend": _backend() if router.features != "ngrams" else None}


def _backend() -> str:
    from router.features import Embedder

    return Embedder.get().backend


def _pin_one_core():
    if not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    return before


def _pcts(ms: list[float]) -> dict:
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p95": round(float(np.percentile(ms, 95)), 3),
            "mean": round(float(np.mean(ms)), 3)}


def _bar(bar: float, value, met: bool) -> dict:
    return {"bar": bar, "value": value, "met": bool(met)}


def bars(result: dict) -> dict:
    diff = result["groups"]["different-generator"]
    none_recall = diff["per_route"].get(NONE, 0.0)
    p50 = result["latency"]["classifier_ms"]["p50"]
    out = {"different_generator_accuracy": _bar(BAR_DIFFERENT, diff["accuracy"], diff["accuracy"] >= BAR_DIFFERENT),
           "none_recall": _bar(BAR_NONE_RECALL, none_recall, none_recall >= BAR_NONE_RECALL),
           "classifier_p50_ms": _bar(BAR_P50_MS, p50, p50 < BAR_P50_MS)}
    if result.get("regret"):
        worst = max(t["regret_share"] for t in result["regret"]["tasks"].values())
        out["regret_share"] = _bar(BAR_REGRET, worst, worst <= BAR_REGRET)
    return out


def _short(prompt: str) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= 200 else f"{prompt[:120]} [...] {prompt[-70:]}"
