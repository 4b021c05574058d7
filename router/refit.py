"""A new task joins the router: add its route and measure how much the earlier routes moved.

The earlier routes keep their weights (`add_route`): only the new route's weight row is fit, by the same softmax
cross-entropy with the others held fixed, so a prompt of an earlier route can move only to the new route (or
under the threshold), never between earlier routes, and the fit takes seconds, not a full refit's minutes.
Measured against a full refit on the same data (docs/router.md): the full refit moved summarization by 8 points
when a dialogue-topic task joined; holding the earlier weights fixed keeps every earlier route within a point.

The disturbance is measured on the earlier routes' evaluation prompts (validation rows in both generators'
wording, and both out-of-scope sets): accuracy per earlier route before and after, and the share of those
prompts whose route changed at all.
"""

from __future__ import annotations

import time

import numpy as np

from router.model import NONE

KEEP = 0.98  # share of the new route's calibration prompts it must keep after `yield_to_earlier`
MARGIN = 0.5  # logit margin left to those prompts
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


def add_route(before, prompts: list[str], labels: list[str], route: str, max_iter: int = 200):
    """A copy of `before` with `route` added: the earlier rows of `coef_`/`intercept_`, the temperature and the
    threshold stay; the new row minimises `before`'s objective (C x balanced softmax cross-entropy + half the
    squared weights) over `prompts` with the earlier rows fixed."""
    import copy

    from scipy.optimize import minimize

    full = before.transform(list(prompts))
    fixed = np.asarray(before.logits_from_features(full), np.float64)
    active = np.unique(full.indices)  # a column no prompt uses gets weight 0 under the L2 term: solve without it
    X = full[:, active]
    is_new = np.asarray(labels) == route
    counts = {y: labels.count(y) for y in set(labels)}
    weight = np.asarray([len(labels) / (len(counts) * counts[y]) for y in labels]) * before.C  # class_weight="balanced"
    top = fixed.max(axis=1)
    log_rest = np.log(np.exp(fixed - top[:, None]).sum(axis=1))  # the earlier routes' log-mass, shifted by `top`
    index = {str(c): i for i, c in enumerate(before.classes_)}
    target = np.asarray([fixed[i, index[y]] - top[i] if not is_new[i] else 0.0 for i, y in enumerate(labels)])

    def objective(wb: np.ndarray):
        s = np.asarray(X @ wb[:-1]).ravel() + wb[-1] - top
        lse = np.logaddexp(log_rest, s)
        g = weight * (np.exp(s - lse) - is_new)
        loss = weight @ (lse - np.where(is_new, s, target)) + 0.5 * wb[:-1] @ wb[:-1]
        return loss, np.concatenate([np.asarray(X.T @ g).ravel() + wb[:-1], [g.sum()]])

    wb = minimize(objective, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B",
                  options={"maxiter": max_iter}).x
    row = np.zeros(full.shape[1], np.float32)
    row[active] = wb[:-1]
    after = copy.deepcopy(before)
    at = int(np.searchsorted(before.classes_, route))
    after.classes_ = np.insert(before.classes_.astype(object), at, route).astype(str)
    after.coef_ = np.ascontiguousarray(np.insert(before.coef_, at, row, axis=0))
    after.intercept_ = np.insert(before.intercept_, at, np.float32(wb[-1])).astype(np.float32)
    after.n_features_in_ = full.shape[1]
    return after


def refit_with_task(specs: list, new_spec, data_dir=None, rows_per_task: int = 300, seed: int = 0, n: int = 100,
                    before=None, full: bool = False, **params) -> tuple[object, dict]:
    """Add `new_spec`'s route to `before` (fit for `specs` when not given) and measure the disturbance.
    `full`: refit every route instead (the way a first fit goes). Returns (the new router, the report)."""
    from router.api import fit_specs

    if new_spec.name in {s.name for s in specs} or new_spec.name == NONE:
        from zoo.errors import ZooError

        raise ZooError(f"task {new_spec.name!r} is already a route of this router; pick a new task name")
    if before is None:
        before, _ = fit_specs(specs, data_dir, seed, rows_per_task, **params)
    params.setdefault("threshold", before.threshold)  # the same doubt policy: only the new route differs
    t0 = time.perf_counter()
    if full:
        after, training = fit_specs([*specs, new_spec], data_dir, seed, rows_per_task, **params)
    else:
        after, training = _incremental(before, specs, new_spec, data_dir, seed, rows_per_task)
    seconds = time.perf_counter() - t0
    prompts, gold = earlier_prompts(specs, data_dir, n)
    report = {"task": new_spec.name, "fit_seconds": round(seconds, 1), "method": "full" if full else "add_route",
              **disturbance(before, after, prompts, gold)}
    return after, {**report, "training": training}


def _incremental(before, specs: list, new_spec, data_dir, seed: int, rows_per_task: int) -> tuple[object, dict]:
    """`add_route` on the earlier tasks' training prompts (the counter-examples) and the new task's, drawn the
    way a full fit draws them, less the new task's bare inputs: an input alone (a chat) stays with the route
    that had it first, so only a request for the new task moves a prompt; then `yield_to_earlier`."""
    from router import data, phrasings

    split = {s.name: data.split_rows(s, data_dir, rows_per_task, seed) for s in [*specs, new_spec]}
    rows = {k: fit for k, (fit, _) in split.items()}
    prompts, labels = data.training_set(specs, seed=seed, rows=rows)
    others = [str(r[s.truncate_column]) for s in specs if s.truncate_column for r in rows[s.name]]
    new = phrasings.rename_some(data.augmented_prompts(new_spec, rows[new_spec.name], others,
                                                       tuple(a for a in data.AUGMENT if a != "bare"), seed), seed)
    inputs = data._inputs([new_spec], rows)
    jobs = phrasings.other_job_prompts(inputs, int(data.OTHER_JOBS_PER_INPUT * len(inputs)), seed + 1)
    prompts, labels = prompts + new + jobs, labels + [new_spec.name] * len(new) + [NONE] * len(jobs)
    after = add_route(before, prompts, labels, new_spec.name)
    shift = yield_to_earlier(after, new_spec, split[new_spec.name][1], seed)
    return after, {"prompts_per_route": {r: labels.count(r) for r in sorted(set(labels))},
                   "rows_per_task": rows_per_task, "seed": seed, "added_route": new_spec.name,
                   "intercept_shift": round(shift, 4)}


def yield_to_earlier(router, spec, rows: list[dict], seed: int, keep: float = KEEP) -> float:
    """Lower the new route's intercept as far as `keep` of its calibration prompts (unseen rows, the training
    generator's held-back wording) still go to it: where a prompt could be either, the earlier route keeps it.
    Returns the shift (<= 0)."""
    from router.phrasings import varied_prompts

    prompts = varied_prompts(spec, rows, seed, per_row=2, part="calibrate") + [spec.prompt(r, 0) for r in rows]
    if not prompts:
        return 0.0
    logits = router.logits_from_features(router.transform(prompts))
    at = list(router.classes_).index(spec.name)
    margin = logits[:, at] - np.delete(logits, at, axis=1).max(axis=1)
    shift = -max(0.0, float(np.quantile(margin, 1.0 - keep)) - MARGIN)
    router.intercept_[at] += np.float32(shift)
    return shift


def add_task(zoo, task: str, data_dir=None, n: int = 100, rows_per_task: int | None = None) -> dict:
    """`zoo route --add-task FILE`: add `task` (a name or a task file) to the zoo's router (`refit_with_task`:
    the earlier routes keep their weights); save it; return the disturbance of the earlier routes."""
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
