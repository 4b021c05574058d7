"""Weighted combinations of zoo adapters, built by PEFT's `add_weighted_adapter` and saved as a new adapter.

PEFT 0.21.2's `add_weighted_adapter` has constraints this module checks up front, each with what to do instead:
- `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune` combine the A and B matrices separately, so
  every parent must have the same rank (r, and any rank_pattern); `cat` (exact, rank = sum of ranks) and the
  SVD variants (rank = largest rank, or --svd-rank) accept any ranks. `linear` is also only approximate:
  (sum w_i B_i)(sum w_i A_i) has cross terms; `cat` reproduces sum w_i B_i A_i exactly.
- the new adapter copies the *first* parent's config (layers_to_transform, use_dora, use_rslora, bias, ...)
  with lora_alpha = r. So: DoRA is refused (magnitude vectors are not combined), rsLoRA is refused (its scale
  would become sqrt(r) instead of 1), trained biases (bias != "none", lora_bias) and modules_to_save are refused
  (they are not combined), and parents adapting different layers are accepted only when one parent's layout
  covers all the others (it is then put first), since modules outside the new layout would be dropped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json, check_name, replace_dir

METHODS = {
    "cat": "exact: stacks the weighted A/B matrices (rank = sum of ranks); any ranks",
    "svd": "weighted sum of the full deltas, truncated by SVD to --svd-rank (default: largest rank); any ranks",
    "linear": "weighted sum of A and of B separately (approximate); same rank needed",
    "ties": "TIES merging of A and B (trim to --density, elect sign, disjoint mean); same rank needed",
    "dare_linear": "DARE: random drop to --density and rescale, then linear; same rank needed",
    "dare_ties": "DARE drop then TIES sign election; same rank needed",
    "magnitude_prune": "keep the --density largest entries, then linear; same rank needed",
    "ties_svd": "TIES on the full deltas, then SVD; any ranks",
    "dare_linear_svd": "DARE linear on the full deltas, then SVD; any ranks",
    "dare_ties_svd": "DARE TIES on the full deltas, then SVD; any ranks",
    "magnitude_prune_svd": "magnitude pruning on the full deltas, then SVD; any ranks",
}
SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
DENSITY_METHODS = tuple(m for m in METHODS if m.split("_")[0] in ("ties", "dare", "magnitude"))
RANDOM_METHODS = tuple(m for m in METHODS if m.startswith("dare"))
DEFAULT_DENSITY = 0.5
NEW = "blend"  # PEFT-internal adapter names: zoo names may hold '.', which torch module dicts refuse


@dataclass(frozen=True)
class Blend:
    """One weighted combination: which adapters, with which weights, by which method."""

    parents: tuple[str, ...]
    weights: tuple[float, ...]
    method: str = "cat"
    density: float | None = None
    svd_rank: int | None = None
    seed: int = 0

    def __post_init__(self):
        if len(self.parents) < 2:
            raise ZooError("combine needs at least two adapters")
        if len(set(self.parents)) != len(self.parents):
            raise ZooError(f"an adapter is listed twice in {list(self.parents)}; give each once and set its weight")
        if len(self.weights) != len(self.parents):
            raise ZooError(f"{len(self.weights)} weights for {len(self.parents)} adapters; give one weight each")
        if not all(math.isfinite(w) for w in self.weights) or not any(self.weights):
            raise ZooError(f"weights {list(self.weights)} must be finite numbers, not all zero")
        if self.method not in METHODS:
            raise ZooError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        self._check_options()

    def _check_options(self):
        if self.density is not None and self.method not in DENSITY_METHODS:
            raise ZooError(f"--density applies only to {', '.join(DENSITY_METHODS)}, not {self.method!r}")
        if self.density is not None and not 0 < self.density <= 1:
            raise ZooError(f"--density must be in (0, 1], got {self.density}")
        if self.svd_rank is not None and not self.method.endswith("svd"):
            raise ZooError(f"--svd-rank applies only to the SVD methods, not {self.method!r}")
        if self.svd_rank is not None and self.svd_rank < 1:
            raise ZooError(f"--svd-rank must be >= 1, got {self.svd_rank}")

    @property
    def effective_density(self) -> float | None:
        return (self.density or DEFAULT_DENSITY) if self.method in DENSITY_METHODS else None

    @property
    def label(self) -> str:
        w = "/".join(f"{x:g}" for x in self.weights)
        d = f" d={self.effective_density:g}" if self.effective_density is not None else ""
        return f"{self.method} {w}{d}"

    def reordered(self, first: int) -> Blend:
        order = [first] + [i for i in range(len(self.parents)) if i != first]
        return Blend(tuple(self.parents[i] for i in order), tuple(self.weights[i] for i in order), self.method,
                     self.density, self.svd_rank, self.seed)


# ---- checks -------------------------------------------------------------------------------------------------
def parent_entries(zoo, parents) -> tuple[dict[str, dict], object]:
    """Every parent exists, is undamaged and was trained on the same base; returns entries and that base."""
    from zoo.base import check_same_base, resolve_base

    entries = {p: zoo.get(p) for p in parents}
    problems = {p.name: p for p in zoo.problems()}
    for p in parents:
        if p in problems:
            raise ZooError(f"adapter {p!r} is damaged: {problems[p]}")
    hashes = {p: e.get("base", {}).get("hash") for p, e in entries.items()}
    if len(set(hashes.values())) > 1:
        raise ZooError(f"adapters come from different bases {hashes}; combine only adapters of one base")
    first = entries[parents[0]].get("base", {})
    if not first.get("id"):
        raise ZooError(f"adapter {parents[0]!r} does not record its base; retrain it")
    ref = resolve_base(first["id"])
    for e in entries.values():
        check_same_base(e, ref)
    return entries, ref


def adapter_config(zoo, name: str) -> dict:
    return json.loads((zoo.adapter_dir(name) / "adapter_config.json").read_text())


def refuse_unsupported(name: str, cfg: dict) -> None:
    """Features add_weighted_adapter silently gets wrong: refuse them, with the reason."""
    why = None
    if cfg.get("peft_type", "LORA") != "LORA":
        why = f"it is a {cfg.get('peft_type')} adapter; only LoRA adapters can be combined"
    elif cfg.get("use_dora"):
        why = "it uses DoRA: add_weighted_adapter combines A/B but not the magnitude vectors"
    elif cfg.get("use_rslora"):
        why = "it uses rsLoRA: the new adapter gets lora_alpha = r, so its scale would be sqrt(r) instead of 1"
    elif cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        why = "it trains biases, which add_weighted_adapter does not combine"
    elif cfg.get("modules_to_save"):
        why = f"it fully trains {cfg['modules_to_save']} (modules_to_save), which cannot be blended"
    elif cfg.get("trainable_token_indices"):
        why = "it trains token embeddings (trainable_token_indices), which add_weighted_adapter does not combine"
    elif cfg.get("target_parameters"):
        why = "it targets nn.Parameters (target_parameters), which add_weighted_adapter does not support"
    if why:
        raise ZooError(f"cannot combine {name!r}: {why}; merge it alone with `zoo merge` or retrain it as plain LoRA")


def max_rank(cfg: dict) -> int:
    return max([cfg["r"], *(cfg.get("rank_pattern") or {}).values()])


def check_ranks(configs: dict[str, dict], method: str) -> None:
    ranks = {n: max_rank(c) for n, c in configs.items()}
    patterns = any(c.get("rank_pattern") for c in configs.values())
    if method in SAME_RANK and (len(set(ranks.values())) > 1 or patterns):
        raise ZooError(f"method {method!r} needs adapters of one rank without rank_pattern (ranks: {ranks}); "
                       "use --method cat (exact, rank = sum) or --method svd (rank = largest)")


def layout(cfg: dict) -> tuple[frozenset | None, frozenset | str]:
    """(layers, target modules) an adapter covers; None layers = every layer; a str target = a regex."""
    layers = cfg.get("layers_to_transform")
    layers = None if layers is None else frozenset([layers] if isinstance(layers, int) else layers)
    targets = cfg.get("target_modules")
    return layers, targets if isinstance(targets, str) else frozenset(targets or ())


def covering_parent(configs: dict[str, dict]) -> int:
    """Index of a parent whose layers and modules include every other parent's (it must come first)."""
    names = list(configs)
    layouts = [layout(configs[n]) for n in names]
    if len({c.get("layers_pattern") and str(c.get("layers_pattern")) for c in configs.values()}) > 1:
        raise ZooError(f"adapters {names} use different layers_pattern; retrain them with the same settings")
    if any(isinstance(t, str) for _, t in layouts):
        if len(set(layouts)) > 1:
            raise ZooError(f"adapters {names} target modules by different regexes; retrain them with one target list")
        return 0
    all_targets = frozenset().union(*(t for _, t in layouts))
    for i, (layers, targets) in enumerate(layouts):
        if targets >= all_targets and all(layers is None or (other is not None and other <= layers)
                                          for other, _ in layouts):
            return i
    raise ZooError(
        f"adapters {names} adapt different layers/modules and none covers the others: add_weighted_adapter lays "
        "the new adapter out like its first parent and would drop the rest; retrain them with the same --layers "
        "and --targets")


def plan(zoo, blend: Blend) -> tuple[Blend, dict[str, dict], object]:
    """Validate a blend against the zoo; returns it (parents reordered if needed), the entries and the base."""
    entries, ref = parent_entries(zoo, blend.parents)
    configs = {p: adapter_config(zoo, p) for p in blend.parents}
    for p, cfg in configs.items():
        refuse_unsupported(p, cfg)
    check_ranks(configs, blend.method)
    first = covering_parent(configs)
    return (blend.reordered(first) if first else blend), entries, ref


# ---- building -----------------------------------------------------------------------------------------------
def apply_blend(peft_model, adapter_names: list[str], blend: Blend, new_name: str) -> None:
    """Add the blend to a PeftModel holding the parents under `adapter_names` (in `blend.parents` order)."""
    import torch

    if blend.method in RANDOM_METHODS:
        torch.manual_seed(blend.seed)  # DARE drops entries at random: a seed makes the blend reproducible
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.add_weighted_adapter(adapter_names, list(blend.weights), new_name,
                                        combination_type=blend.method, svd_rank=blend.svd_rank,
                                        density=blend.effective_density,
                                        svd_full_matrices=False)  # same top-r factors, half the time


def load_parents(zoo, ref, parents: tuple[str, ...]):
    """The parents on one fresh fp32 base (CPU), as PEFT adapters p0, p1, ... in order."""
    from peft import PeftModel

    from zoo.merge import load_fp32

    base = load_fp32(ref.path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base, str(zoo.adapter_dir(parents[0])), adapter_name="p0")
        for i, p in enumerate(parents[1:], 1):
            model.load_adapter(str(zoo.adapter_dir(p)), adapter_name=f"p{i}")
    return model


def check_target_name(zoo, name: str, parents, force: bool) -> None:
    check_name(name, "adapter name")
    if name in parents:
        raise ZooError(f"{name!r} is one of the adapters being combined; pick another --name")
    exists = name in zoo.entries() or zoo.adapter_dir(name).exists()
    if exists and not force:
        raise ZooError(f"an adapter named {name!r} already exists; pick another --name or pass --force")


def combine(zoo, blend: Blend, name: str, route_as: list[str] | None = None, force: bool = False) -> dict:
    """Build `blend` as a new zoo adapter `name` (flat PEFT folder + manifest entry); returns the entry."""
    from zoo.train import _flatten_adapter_dir

    check_target_name(zoo, name, blend.parents, force)
    route_as = check_route_as(route_as)
    blend, entries, ref = plan(zoo, blend)
    model = load_parents(zoo, ref, blend.parents)
    apply_blend(model, [f"p{i}" for i in range(len(blend.parents))], blend, NEW)
    staged = zoo.staging_dir(name)
    try:
        model.save_pretrained(staged, selected_adapters=[NEW], safe_serialization=True)
        _flatten_adapter_dir(staged, NEW)
        entry = combined_entry(name, blend, entries, json.loads((staged / "adapter_config.json").read_text()),
                               route_as)
        atomic_write_json(staged / "combination.json", {k: entry[k] for k in LINEAGE})
        with zoo.lock():
            if not force and zoo.adapter_dir(name).exists():
                raise ZooError(f"an adapter named {name!r} appeared meanwhile; pass --force to replace it")
            replace_dir(staged, zoo.adapter_dir(name))
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    zoo.put(name, entry)
    return entry


LINEAGE = ("parents", "weights", "method", "density", "svd_rank", "seed", "parent_tasks", "base")


def check_route_as(route_as: list[str] | None) -> list[str]:
    from tasks import get_task

    return [get_task(t).name for t in route_as or []]


def combined_entry(name: str, blend: Blend, entries: dict, cfg: dict, route_as: list[str]) -> dict:
    from zoo.store import now_iso

    first = entries[blend.parents[0]]
    layers = cfg.get("layers_to_transform")
    return {
        "name": name, "task": route_as[0] if route_as else first.get("task"), "kind": "combined",
        "parents": list(blend.parents), "weights": list(blend.weights), "method": blend.method,
        "density": blend.effective_density, "svd_rank": blend.svd_rank,
        "seed": blend.seed if blend.method in RANDOM_METHODS else None,
        "parent_tasks": {p: entries[p].get("task") for p in blend.parents},
        "route_as": route_as, "base": dict(first.get("base", {})),
        "lora": {"r": cfg["r"], "alpha": cfg["lora_alpha"], "dropout": cfg.get("lora_dropout", 0.0),
                 "target_modules": sorted(cfg["target_modules"]) if isinstance(cfg["target_modules"], list)
                 else cfg["target_modules"],
                 "layers": None if layers is None else len(layers if isinstance(layers, list) else [layers]),
                 "use_dora": False},
        "path": f"adapters/{name}", "created": now_iso(), "metrics": {},
    }


# ---- search: a small grid of blends scored on every parent's task -------------------------------------------
DEFAULT_SEARCH_N = 16


NORM_BALANCED_SCALES = (0.6, 0.8)  # weight of the smallest-delta adapter in the norm-balanced grid points


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


def task_score(spec, metrics: dict) -> float:
    return float(metrics[spec.primary_metric])


def blend_row(label: str, blend: Blend | None, specs, scores: dict, own: dict, n: int) -> dict:
    """One report row: each task's score as a fraction of that task's own adapter on the same sample."""
    tasks = {}
    for spec in specs:
        s, o = task_score(spec, scores[spec.name]), own[spec.name]
        tasks[spec.name] = {"metric": spec.primary_metric, "score": s, "own": o,
                            "fraction": s / o if o > 0 else None, "all": scores[spec.name]}
    fractions = [t["fraction"] for t in tasks.values() if t["fraction"] is not None]
    return {"name": label, **({} if blend is None else {"blend": asdict(blend)}), "n": n, "tasks": tasks,
            "mean_fraction": sum(fractions) / len(fractions) if fractions else None, "chosen": False}


def task_owners(entries: dict[str, dict], parents) -> dict[str, str]:
    """Each parent task -> the parent adapter trained for it (the first one, if several share a task)."""
    owners: dict[str, str] = {}
    for p in parents:
        owners.setdefault(entries[p].get("task"), p)
    return owners


def search(zoo, blends: list[Blend], n: int = DEFAULT_SEARCH_N, data_dir=None, seed: int = 0,
           quant: bool = True) -> list[dict]:
    """Score every blend on each parent's task (on the served NF4 base, blends built in memory, nothing
    written); rows are sorted best first by the mean fraction of each task's own adapter score."""
    from tasks import get_task
    from zoo.evaluation import evaluate_adapter_on_task
    from zoo.serving.runtime import Runtime

    checked = [plan(zoo, b)[0] for b in blends]
    entries, ref = parent_entries(zoo, checked[0].parents)
    owners = task_owners(entries, checked[0].parents)
    specs = [get_task(t) for t in owners]
    runtime = Runtime(zoo, base=ref.id, quant=quant)
    try:
        own = {s.name: task_score(s, evaluate_adapter_on_task(runtime, owners[s.name], s, n, data_dir, seed))
               for s in specs}
        print("[zoo] own adapters: " + ", ".join(f"{owners[t]} on {t} = {v:.3g}" for t, v in own.items()),
              flush=True)
        rows = []
        for i, blend in enumerate(checked):
            scores = score_in_runtime(runtime, blend, f"zoo_search_{i}", specs, n, data_dir, seed)
            rows.append(blend_row(blend.label, blend, specs, scores, own, n))
            print(f"[zoo] {blend.label:<28} mean fraction of own-adapter score: "
                  f"{_fmt(rows[-1]['mean_fraction'])}", flush=True)
    finally:
        runtime.close()
    return sorted(rows, key=lambda r: -1e9 if r["mean_fraction"] is None else -r["mean_fraction"])


def score_in_runtime(runtime, blend: Blend, name: str, specs, n: int, data_dir, seed: int) -> dict:
    """Add the blend to the runtime's PeftModel under `name`, score it on every task, then drop it again."""
    from zoo.evaluation import evaluate_adapter_on_task

    with runtime.lock:
        for p in blend.parents:
            runtime.load_adapter(p)
        apply_blend(runtime.model, list(blend.parents), blend, name)
    try:
        return {s.name: evaluate_adapter_on_task(runtime, name, s, n, data_dir, seed) for s in specs}
    finally:
        with runtime.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "deleted the active adapter": the runtime sets one per call
            runtime.model.delete_adapter(name)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def own_score(entry: dict | None, spec) -> float | None:
    """A single-task adapter's recorded score on its task: from `zoo eval --tasks` or plain `zoo eval`."""
    metrics = (entry or {}).get("metrics", {})
    on_task = metrics.get("tasks", {}).get(spec.name)
    if on_task is None and metrics.get("eval", {}).get("task") == spec.name:
        on_task = metrics["eval"]["adapter"]
    return task_score(spec, on_task) if on_task else None


def rows_from_manifest(zoo) -> list[dict]:
    """Report rows for combined adapters scored by `zoo eval NAME --tasks ...`, against their parents' scores."""
    from tasks import all_tasks

    entries, known = zoo.entries(), all_tasks()
    rows = []
    for name, e in sorted(entries.items()):
        scores = {t: v for t, v in e.get("metrics", {}).get("tasks", {}).items() if t in known}
        if e.get("kind") != "combined" or not scores:
            continue
        specs = [known[t] for t in scores]
        owners = task_owners({p: entries.get(p, {}) for p in e["parents"]}, e["parents"])
        own = {s.name: own_score(entries.get(owners.get(s.name)), s) or 0.0 for s in specs}
        label = f"{name} ({e['method']} {'/'.join(f'{w:g}' for w in e['weights'])})"
        rows.append({**blend_row(label, None, specs, scores, own, e["metrics"].get("tasks_n")), "adapter": name})
    return sorted(rows, key=lambda r: -1e9 if r["mean_fraction"] is None else -r["mean_fraction"])


# ---- report -------------------------------------------------------------------------------------------------
def write_combination_report(zoo, results: list[dict]) -> Path:
    """`reports/combinations.{md,json,png}`: for each blend, each task's score as a fraction of its own adapter."""
    from zoo.fsutil import atomic_write_text

    if not results:
        raise ZooError("no blends to report; run `zoo combine ... --search` first")
    out = zoo.reports_dir / "combinations"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), {"blends": results})
    plot_fractions(out.with_suffix(".png"), results)
    atomic_write_text(out.with_suffix(".md"), combination_markdown(results, out.with_suffix(".png").name))
    return out.with_suffix(".md")


def report_tasks(results: list[dict]) -> list[str]:
    return list(dict.fromkeys(t for r in results for t in r["tasks"]))


def combination_markdown(results: list[dict], png_name: str) -> str:
    tasks = report_tasks(results)
    lines = ["# Adapter combinations", "",
             "Each cell: the blend's score on the task (primary metric) as a fraction of that task's own "
             "single-task adapter on the same sample (1.00 = as good as the specialist). Rows best first; "
             "**bold** = the blend that was kept.", "",
             "| blend | n | " + " | ".join(tasks) + " | mean |", "|---|---|" + "---|" * (len(tasks) + 1)]
    for r in results:
        cells = []
        for t in tasks:
            c = r["tasks"].get(t)
            cells.append("-" if c is None else f"{_fmt(c['fraction'])} ({c['score']:.3g} / {c['own']:.3g})")
        name = f"**{r['name']}**" if r.get("chosen") else r["name"]
        lines.append(f"| {name} | {r.get('n', '')} | " + " | ".join(cells) + f" | {_fmt(r['mean_fraction'])} |")
    lines += ["", f"![fraction of own-adapter score]({png_name})", ""]
    return "\n".join(lines)


def plot_fractions(path: Path, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = report_tasks(results)
    grid = np.array([[np.nan if (c := r["tasks"].get(t)) is None or c["fraction"] is None else c["fraction"]
                      for t in tasks] for r in results], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 3, 0.45 * len(results) + 1.5))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=max(1.0, float(np.nanmax(grid, initial=1.0))), aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(results)), [("* " if r.get("chosen") else "") + r["name"] for r in results])
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="fraction of own adapter's score")
    ax.set_title("Blends: score per task / single-task adapter score")
    from zoo.reports import save_figure

    save_figure(fig, path, dpi=100)
