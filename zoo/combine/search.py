"""Which blend to keep: a small grid of weights and methods, each blend built in memory on the served runtime
and scored on every parent's task as a fraction of that task's own adapter's score (nothing is written).

The same rows, read back from scores that `zoo eval NAME --tasks ...` recorded, feed the combinations report.
"""

from __future__ import annotations

from dataclasses import asdict

from zoo.combine.plan import adapter_config, max_rank, parent_entries, plan
from zoo.combine.recipe import DENSITY_METHODS, Blend
from zoo.errors import ZooError
from zoo.reports import fmt_fraction

DEFAULT_SEARCH_N = 16
NORM_BALANCED_SCALES = (0.6, 0.8)  # weight of the smallest-delta adapter in the norm-balanced grid points


# ---- the grid -----------------------------------------------------------------------------------------------
def delta_norm(zoo, name: str) -> float:
    """Frobenius norm of the adapter's whole weight change, sqrt(sum over modules of |scale * B @ A|^2)."""
    import torch
    from safetensors.torch import load_file

    cfg = adapter_config(zoo, name)
    scale = cfg["lora_alpha"] / cfg["r"]
    try:
        tensors = load_file(str(zoo.adapter_dir(name) / "adapter_model.safetensors"))
    except Exception as e:  # noqa: BLE001 - truncated or missing file: say which adapter and how to check
        raise ZooError(f"adapter {name!r} cannot be read ({type(e).__name__}); `zoo doctor` explains") from None
    total = 0.0
    for key, a in tensors.items():
        if "lora_A" in key and key.replace("lora_A", "lora_B") in tensors:
            b = tensors[key.replace("lora_A", "lora_B")]
            total += float(torch.linalg.matrix_norm(scale * (b.float() @ a.float())) ** 2)
    return total ** 0.5


def norm_balanced(norms: list[float], scale: float) -> tuple[float, ...]:
    """Weights that give every parent the same delta norm: the smallest-delta parent gets `scale`."""
    smallest = min(n for n in norms if n > 0)
    return tuple(round(scale * smallest / n, 3) if n > 0 else 0.0 for n in norms)


def search_grid(parents: tuple[str, ...], methods: list[str] | None, weights: list[float] | None,
                density: float | None, same_rank: bool, seed: int = 0,
                norms: list[float] | None = None) -> list[Blend]:
    """A handful of blends: exact and SVD methods (plus linear/ties when ranks match) x a few weightings.

    Uniform weights let the adapter with the largest delta drown the others (measured on the built-in three,
    40 examples per task: the sentiment adapter's delta is 2.5x the QA one's; cat at 1/3 each kept
    1.03 / 0.73 / 0.61 of the sentiment / QA / summarization scores, norm-balanced 0.234 / 0.6 / 0.521 kept
    1.03 / 0.95 / 0.90), so with `norms` the grid adds norm-balanced weightings too."""
    k = len(parents)
    methods = methods or ["cat", "svd"] + (["linear", "ties"] if same_rank else [])
    if weights:
        grid = [tuple(weights)]
    else:
        grid = [tuple([1.0 / k] * k), tuple([1.0] * k)]
        if k == 2:
            grid += [(0.7, 0.3), (0.3, 0.7)]
        else:
            grid.insert(1, tuple([0.5] * k))
        if norms and any(n > 0 for n in norms):
            grid += [w for w in (norm_balanced(norms, s) for s in NORM_BALANCED_SCALES) if w not in grid]
    return [Blend(parents, w, m, density if m in DENSITY_METHODS else None, seed=seed)
            for m in methods for w in grid]


def grid_for(zoo, parents: tuple[str, ...], methods: list[str] | None = None, weights: list[float] | None = None,
             density: float | None = None, seed: int = 0) -> list[Blend]:
    """`search_grid` for these zoo adapters: same-rank methods only when their ranks match, and norm-balanced
    weightings unless `weights` are given."""
    if weights and len(weights) != len(parents):
        raise ZooError(f"{len(weights)} weights for {len(parents)} adapters; give one weight each")
    for p in parents:
        zoo.get(p)  # a clear error for an unknown name before any file is read
    same_rank = len({max_rank(adapter_config(zoo, p)) for p in parents}) == 1
    norms = None if weights else [delta_norm(zoo, p) for p in parents]
    return search_grid(parents, methods, weights, density, same_rank, seed, norms)


# ---- rows: each task's score as a fraction of its own adapter's ----------------------------------------------
def task_score(spec, metrics: dict) -> float:
    return float(metrics[spec.primary_metric])


def blend_row(label: str, blend: Blend | None, specs, scores: dict, own: dict, n: int | None) -> dict:
    """One report row: each task's score as a fraction of that task's own adapter on the same sample."""
    tasks = {}
    for spec in specs:
        s, o = task_score(spec, scores[spec.name]), own[spec.name]
        tasks[spec.name] = {"metric": spec.primary_metric, "score": s, "own": o,
                            "fraction": s / o if o > 0 else None, "all": scores[spec.name]}
    fractions = [t["fraction"] for t in tasks.values() if t["fraction"] is not None]
    return {"name": label, **({} if blend is None else {"blend": asdict(blend)}), "n": n, "tasks": tasks,
            "mean_fraction": sum(fractions) / len(fractions) if fractions else None, "chosen": False}


def best_first(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: -1e9 if r["mean_fraction"] is None else -r["mean_fraction"])


def task_owners(zoo, parents) -> dict[str, tuple[str, object]]:
    """Each parent task -> (the parent adapter trained for it, the first if several share it; its task spec)."""
    from tasks import spec_for_adapter

    owners: dict[str, tuple[str, object]] = {}
    for p in parents:
        spec = spec_for_adapter(zoo, p)
        owners.setdefault(spec.name, (p, spec))
    return owners


# ---- scoring on the served runtime --------------------------------------------------------------------------
def search(zoo, blends: list[Blend], n: int = DEFAULT_SEARCH_N, data_dir=None, seed: int = 0,
           quant: bool = True) -> list[dict]:
    """Score every blend on each parent's task (on the served NF4 base, blends built in memory, nothing
    written); rows are sorted best first by the mean fraction of each task's own adapter score."""
    from zoo.evaluation import evaluate_adapter_on_task
    from zoo.serving.runtime import Runtime

    checked = [plan(zoo, b)[0] for b in blends]
    _, ref = parent_entries(zoo, checked[0].parents)
    owners = task_owners(zoo, checked[0].parents)
    specs = [spec for _, spec in owners.values()]
    with Runtime(zoo, base=ref.id, quant=quant) as runtime:
        own = {s.name: task_score(s, evaluate_adapter_on_task(runtime, owners[s.name][0], s, n, data_dir, seed))
               for s in specs}
        print("[zoo] own adapters: " + ", ".join(f"{owners[t][0]} on {t} = {v:.3g}" for t, v in own.items()),
              flush=True)
        rows = []
        for i, blend in enumerate(checked):
            scores = score_in_runtime(runtime, blend, f"zoo_search_{i}", specs, n, data_dir, seed)
            rows.append(blend_row(blend.label, blend, specs, scores, own, n))
            print(f"[zoo] {blend.label:<28} mean fraction of own-adapter score: "
                  f"{fmt_fraction(rows[-1]['mean_fraction'])}", flush=True)
    return best_first(rows)


def score_in_runtime(runtime, blend: Blend, name: str, specs, n: int, data_dir, seed: int) -> dict:
    """Score the blend, built in memory on the runtime under `name` for as long as this takes, on every task."""
    from zoo.evaluation import evaluate_adapter_on_task

    with runtime.temporary_adapter(blend=blend, name=name) as adapter:
        return {s.name: evaluate_adapter_on_task(runtime, adapter, s, n, data_dir, seed) for s in specs}


# ---- rows from scores recorded by `zoo eval NAME --tasks ...` -----------------------------------------------
def own_score(entry, spec) -> float | None:
    """A single-task adapter's recorded score on its task: from `zoo eval --tasks` or plain `zoo eval`."""
    metrics = entry.metrics if entry is not None else {}
    on_task = metrics.get("tasks", {}).get(spec.name)
    if on_task is None and metrics.get("eval", {}).get("task") == spec.name:
        on_task = metrics["eval"]["adapter"]
    return task_score(spec, on_task) if on_task else None


def manifest_row(zoo, entry, entries: dict) -> dict | None:
    """The report row of one combined adapter from its recorded scores, against its parents' (None if unscored)."""
    from tasks import all_tasks

    owners = task_owners(zoo, [p for p in entry.blend.parents if p in entries])
    known = {**all_tasks(), **{t: spec for t, (_, spec) in owners.items()}}
    scores = {t: v for t, v in entry.metrics.get("tasks", {}).items() if t in known}
    if not scores:
        return None
    specs = [known[t] for t in scores]
    own = {s.name: own_score(entries[owners[s.name][0]] if s.name in owners else None, s) or 0.0 for s in specs}
    label = f"{entry.name} ({entry.blend.method} {'/'.join(f'{w:g}' for w in entry.blend.weights)})"
    return {**blend_row(label, None, specs, scores, own, entry.metrics.get("tasks_n")), "adapter": entry.name}


def rows_from_manifest(zoo) -> list[dict]:
    """Report rows for combined adapters scored by `zoo eval NAME --tasks ...`, best first."""
    entries = zoo.entries()
    rows = [manifest_row(zoo, e, entries) for _, e in sorted(entries.items())
            if e.kind == "combined" and e.blend is not None]
    return best_first([r for r in rows if r is not None])
