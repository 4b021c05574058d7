"""`reports/router.{md,json}` + `router_confusion.png`: how well the zoo's router routes prompts it never saw,
and how long it takes per prompt (the classifier apart from the embedding model)."""

from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np

from router.model import NONE
from zoo.fsutil import atomic_write_json, atomic_write_text
from zoo.reports import save_figure

BAR_ACCURACY = 0.97
BAR_OOS = 0.90
BAR_P50_MS = 2.0
LATENCY_PROMPTS = 200


def scored_sets(name: str) -> bool:
    """The sets the bar is measured on: unseen wording (validation x held-out phrasings), unseen data (each
    task's out-of-domain set x its templates) and unseen out-of-scope prompts. Validation x templates and
    out-of-domain x held-out phrasings (both shifts at once) are reported beside them."""
    return name.endswith(("validation/held-out", "ood/templates", "out-of-scope"))


def write_router_report(zoo, data_dir=None, n: int = 100, seed: int = 1) -> dict:
    """Evaluate the zoo's router, write the report files and return the numbers."""
    from router import load_router
    from router.data import eval_sets
    from tasks import all_tasks

    router = load_router(zoo)
    known = all_tasks()
    specs = [known[str(r)] for r in router.classes_ if str(r) != NONE and str(r) in known]
    sets = eval_sets(specs, data_dir=data_dir, n=n, seed=seed)
    results = {name: score_set(router, prompts, gold) for name, (prompts, gold) in sets.items()}
    result = summarize(router, results)
    sample = [p for prompts, _ in sets.values() for p in prompts[:: max(1, len(prompts) // 25)]]
    result["latency"] = measure_latency(router, sample[:LATENCY_PROMPTS])
    result["bars"] = bars(result)
    write_files(zoo.reports_dir, result, results)
    return result


def score_set(router, prompts: list[str], gold: list[str]) -> dict:
    routed = router.route(prompts)
    pred = [r["route"] for r in routed]
    misses = [{"prompt": _short(p), "gold": g, "route": r["route"], "p": round(max(r["probs"].values()), 3)}
              for p, g, r in zip(prompts, gold, routed) if r["route"] != g]
    return {"n": len(prompts), "accuracy": float(np.mean([p == g for p, g in zip(pred, gold)])),
            "pred": pred, "gold": gold, "misses": misses[:8]}


def summarize(router, results: dict) -> dict:
    routes = [str(c) for c in router.classes_]
    scored = [k for k in results if scored_sets(k)]
    gold = [g for k in scored for g in results[k]["gold"]]
    pred = [p for k in scored for p in results[k]["pred"]]
    per_route = {r: float(np.mean([p == g for p, g in zip(pred, gold) if g == r])) for r in routes if r in gold}
    confusion = Counter(zip(gold, pred))
    return {
        "routes": routes, "threshold": router.threshold, "params": router.get_params(),
        "scored_sets": scored, "n": len(gold),
        "accuracy": float(np.mean([p == g for p, g in zip(pred, gold)])) if gold else 0.0,
        "accuracy_per_route": per_route,
        "accuracy_all_held_out": _pooled(results, [k for k in results if not k.endswith("/templates")
                                                   or k.endswith("ood/templates")]),
        "out_of_scope_to_none": results.get("none/out-of-scope", {}).get("accuracy"),
        "sets": {k: {"n": v["n"], "accuracy": v["accuracy"], "scored": scored_sets(k), "misses": v["misses"]}
                 for k, v in results.items()},
        "confusion": {"routes": routes, "matrix": [[confusion[(g, p)] for p in routes] for g in routes]},
    }


def _pooled(results: dict, names: list[str]) -> float:
    hits = sum(results[k]["accuracy"] * results[k]["n"] for k in names)
    n = sum(results[k]["n"] for k in names)
    return hits / n if n else 0.0


def measure_latency(router, prompts: list[str]) -> dict:
    """Per-prompt time, one prompt at a time on one CPU core: the embedding model and the classifier
    (features + linear layer + softmax) timed apart."""
    import torch

    threads, affinity = torch.get_num_threads(), _pin_one_core()
    torch.set_num_threads(1)
    try:
        router.route(prompts[:2])  # load the embedding model, warm caches
        embed_ms, clf_ms = [], []
        for p in prompts:
            t0 = time.perf_counter()
            emb = router.embed([p])
            t1 = time.perf_counter()
            router.decide(router.proba_from_features(router.transform([p], embeddings=emb)))
            t2 = time.perf_counter()
            embed_ms.append((t1 - t0) * 1e3)
            clf_ms.append((t2 - t1) * 1e3)
    finally:
        torch.set_num_threads(threads)
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    return {"prompts": len(prompts), "cores": 1, "load_average": round(os.getloadavg()[0], 2),
            "classifier_ms": _pcts(clf_ms),
            "embedding_ms": _pcts(embed_ms) if router.features != "ngrams" else None}


def _pin_one_core():
    if not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    return before


def _pcts(ms: list[float]) -> dict:
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3),
            "mean": round(float(np.mean(ms)), 3)}


def bars(result: dict) -> dict:
    return {"accuracy": {"bar": BAR_ACCURACY, "value": result["accuracy"], "met": result["accuracy"] >= BAR_ACCURACY},
            "out_of_scope_to_none": {"bar": BAR_OOS, "value": result["out_of_scope_to_none"],
                                     "met": (result["out_of_scope_to_none"] or 0) >= BAR_OOS},
            "classifier_p50_ms": {"bar": BAR_P50_MS, "value": result["latency"]["classifier_ms"]["p50"],
                                  "met": result["latency"]["classifier_ms"]["p50"] < BAR_P50_MS}}


def _short(prompt: str) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= 200 else f"{prompt[:120]} [...] {prompt[-70:]}"


# files ---------------------------------------------------------------------------------------------------
def write_files(reports_dir, result: dict, results: dict) -> None:
    reports_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(reports_dir / "router.json", result)
    plot_confusion(reports_dir / "router_confusion.png", result["confusion"])
    atomic_write_text(reports_dir / "router.md", markdown(result))


def plot_confusion(path, confusion: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes, m = confusion["routes"], np.asarray(confusion["matrix"])
    fig, ax = plt.subplots(figsize=(1.3 * len(routes) + 2, 1.1 * len(routes) + 1.5))
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(routes)):
        for j in range(len(routes)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(routes)), routes, rotation=30, ha="right")
    ax.set_yticks(range(len(routes)), routes)
    ax.set_xlabel("routed to")
    ax.set_ylabel("should go to")
    ax.set_title("Router on held-out prompts")
    save_figure(fig, path)


def markdown(result: dict) -> str:
    lat, b = result["latency"], result["bars"]
    lines = [
        "# Router", "",
        f"Routes: {', '.join(result['routes'])}; below probability {result['threshold']} a prompt goes to `none`. "
        f"Features: `{result['params']['features']}`.", "",
        "## Against the bar", "", "| | bar | measured | met |", "|---|---|---|---|",
        f"| accuracy on {result['n']} held-out prompts | >= {b['accuracy']['bar']:.0%} | {b['accuracy']['value']:.1%} | {_yes(b['accuracy'])} |",
        f"| out-of-scope prompts sent to `none` | >= {b['out_of_scope_to_none']['bar']:.0%} | {b['out_of_scope_to_none']['value']:.1%} | {_yes(b['out_of_scope_to_none'])} |",
        f"| classifier latency p50 (1 core) | < {b['classifier_p50_ms']['bar']} ms | {b['classifier_p50_ms']['value']:.2f} ms | {_yes(b['classifier_p50_ms'])} |",
        "", "Accuracy per route on those prompts: "
        + ", ".join(f"{r} {a:.1%}" for r, a in result["accuracy_per_route"].items()) + ". "
        f"With the out-of-domain rows in held-out phrasings added (new data and new wording at once): "
        f"{result['accuracy_all_held_out']:.1%}.", "",
        "## Per set", "", "Scored sets count toward the bar; the others are shown for context.", "",
        "| set | prompts | accuracy | scored |", "|---|---|---|---|",
    ]
    lines += [f"| {k} | {v['n']} | {v['accuracy']:.1%} | {'yes' if v['scored'] else 'no'} |" for k, v in result["sets"].items()]
    emb = lat["embedding_ms"]
    lines += ["", "## Latency per prompt", "",
              f"{lat['prompts']} prompts routed one at a time, pinned to one CPU core "
              f"(machine load average {lat['load_average']} while measuring: other work inflates these times).", "",
              "| part | p50 ms | p99 ms |", "|---|---|---|",
              f"| classifier (n-gram features + linear layer + softmax) | {lat['classifier_ms']['p50']:.3f} | {lat['classifier_ms']['p99']:.3f} |"]
    if emb:
        lines.append(f"| embedding model (MiniLM, first and last segment) | {emb['p50']:.2f} | {emb['p99']:.2f} |")
    lines += ["", "![confusion matrix](router_confusion.png)", "", "## Misrouted examples", ""]
    for k, v in result["sets"].items():
        for m in v["misses"][:3]:
            lines.append(f"- {k}: `{m['route']}` (p={m['p']}) instead of `{m['gold']}`: {m['prompt'].replace('|', '/')}")
    return "\n".join(lines) + "\n"


def _yes(bar: dict) -> str:
    return "yes" if bar["met"] else "**no**"
