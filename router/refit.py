"""A new task joins the router: refit with its route added and measure how much the earlier routes moved.

The disturbance is measured on the earlier routes' evaluation prompts (validation rows in both generators'
wording, and both out-of-scope sets): accuracy per earlier route before and after, and the share of those
prompts whose route changed at all.
"""

from __future__ import annotations

import time

import numpy as np

from router.model import NONE

DISTURBANCE_SETS = ("validation/same-generator", "validation/different-generator", "none/")


def earlier_prompts(specs: list, data_dir=None, n: int = 100, seed: int = 1) -> tuple[list[str], list[str]]:
    """The prompts the disturbance is measured on, with their gold routes."""
    from router.data import eval_sets

    sets = eval_sets(specs, data_dir=data_dir, n=n, seed=seed)
    picked = [v for k, v in sets.items() if any(s in k for s in DISTURBANCE_SETS)]
    return [p for ps, _ in picked for p in ps], [g for _, gs in picked for g in gs]


def disturbance(before, after, prompts: list[str], gold: list[str]) -> dict:
    """Accuracy per earlier route under both routers, the largest drop, and the share of routes that changed."""
    old, new, gold_a = np.asarray(before.predict(prompts)), np.asarray(after.predict(prompts)), np.asarray(gold)
    per = {r: {"before": float(np.mean(old[gold_a == r] == r)), "after": float(np.mean(new[gold_a == r] == r))}
           for r in sorted(set(gold))}
    return {"prompts": len(prompts), "per_route": per,
            "largest_drop": max(v["before"] - v["after"] for v in per.values()),
            "accuracy": {"before": float(np.mean(old == gold_a)), "after": float(np.mean(new == gold_a))},
            "changed": float(np.mean(old != new))}


def refit_with_task(specs: list, new_spec, data_dir=None, rows_per_task: int = 300, seed: int = 0, n: int = 100,
                    before=None, **params) -> tuple[object, dict]:
    """Fit for `specs` + `new_spec` and compare with `before` (fit for `specs` alone when not given).
    Returns (the new router, the disturbance report with fit seconds)."""
    from router.api import fit_specs

    if new_spec.name in {s.name for s in specs} or new_spec.name == NONE:
        from zoo.errors import ZooError

        raise ZooError(f"task {new_spec.name!r} is already a route of this router; pick a new task name")
    if before is None:
        before, _ = fit_specs(specs, data_dir, seed, rows_per_task, **params)
    params.setdefault("threshold", before.threshold)  # the same doubt policy: only the new route differs
    t0 = time.perf_counter()
    after, training = fit_specs([*specs, new_spec], data_dir, seed, rows_per_task, **params)
    seconds = time.perf_counter() - t0
    prompts, gold = earlier_prompts(specs, data_dir, n)
    report = {"task": new_spec.name, "fit_seconds": round(seconds, 1), **disturbance(before, after, prompts, gold)}
    return after, {**report, "training": training}


def add_task(zoo, task: str, data_dir=None, n: int = 100, rows_per_task: int | None = None) -> dict:
    """`zoo route --train --add-task FILE`: refit the zoo's router with `task` (a name or a task file) added,
    with the saved router's parameters; save it; return the disturbance of the earlier routes."""
    import json

    from router.api import META_FILE, _task_specs, load_router, save_router
    from tasks import get_task

    before = load_router(zoo, check_tasks=False)
    meta = json.loads((zoo.router_dir / META_FILE).read_text(encoding="utf-8"))
    specs = _task_specs(zoo, [str(c) for c in before.classes_ if str(c) != NONE], explicit=True)
    rows = rows_per_task or meta.get("training", {}).get("rows_per_task", 300)
    params = {k: v for k, v in before.get_params().items() if k != "seed"}
    after, report = refit_with_task(specs, get_task(task), data_dir, rows, before.seed, n, before=before, **params)
    save_router(zoo, after, {**report.pop("training"), "added_task": report})
    return report
