"""Evaluation reports: Markdown for people, JSON for scripts, a PNG people would rather look at.

One adapter against the base on its task, in domain and out of domain, each number with its 95% bootstrap interval
(`write_task_report`, `zoo eval`), and blends against their parents' own adapters on every parent task
(`write_combination_report`, `zoo combine --search` / `--report`). Numbers are shown as `zoo.metrics.METRICS` says.
"""

from __future__ import annotations

import json
from pathlib import Path

from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json, atomic_write_text
from zoo.metrics import METRICS


def write_task_report(reports_dir: Path, result: dict, loss_log: list[dict] | None = None) -> Path:
    """Write `<name>.md/.json/.png` and return the Markdown path."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = reports_dir / result["name"]
    atomic_write_json(stem.with_suffix(".json"), result)
    plot_task(stem.with_suffix(".png"), result, loss_log)
    atomic_write_text(stem.with_suffix(".md"), task_markdown(result, stem.with_suffix(".png").name))
    return stem.with_suffix(".md")


def metric_of(key: str):
    """The `METRICS` entry that reports `key` ("macro_f1" -> accuracy, "rougeL" -> rouge); None if none does."""
    return next((m for m in METRICS.values() if key in m.keys), None)


def fmt(key: str, value: float) -> str:
    """A score as its metric shows it (3 decimals for 0-1 numbers, 1 for points)."""
    metric = metric_of(key)
    return metric.display(value, key) if metric else f"{value:.3g}"


def fmt_fraction(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def points(key: str) -> float:
    """Factor that puts a score of `key` on a 0-100 scale."""
    metric = metric_of(key)
    return 100.0 / metric.scale if metric else 1.0


# ---- one adapter vs the base, in domain and out of domain, with 95% intervals -------------------------------
def fmt_interval(key: str, value: float, bounds=None, sign: bool = False) -> str:
    """`0.870 [0.82, 0.91]`: the score as its metric shows it, its interval one digit coarser for 0-1 numbers."""
    text = ("+" if sign and value >= 0 else "") + fmt(key, value)
    if bounds is None:
        return text
    digits = 2 if points(key) == 100.0 else 1
    return f"{text} [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def bounds_of(block: dict, side: str, key: str) -> tuple[float, float] | None:
    """A block's interval for `side` ("base", "adapter", "change") and `key`, if it holds two numbers (a
    manifest from before intervals, or a pulled one, may not)."""
    pair = block
    for part in ("intervals", side, key):
        pair = pair.get(part) if isinstance(pair, dict) else None
    ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_is_number(x) for x in pair)
    return (float(pair[0]), float(pair[1])) if ok else None


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def scored_ood(result: dict) -> dict | None:
    """The out-of-domain block when it was scored (not skipped, not absent)."""
    ood = result.get("ood")
    return ood if isinstance(ood, dict) and isinstance(ood.get("adapter"), dict) else None


def score_table(result: dict) -> list[str]:
    """Markdown rows, one per metric: base, adapter and change on the in-domain sample, then the same on the
    out-of-domain one when it was scored; each with its 95% interval when the result has one."""
    blocks = [("", result)] + ([("OOD ", scored_ood(result))] if scored_ood(result) else [])
    head = ["metric", *(f"{prefix}{col}" for prefix, _ in blocks for col in ("base", "adapter", "change"))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in result["adapter"]:
        lines.append("| " + " | ".join([key, *(c for _, block in blocks for c in _cells(block, key))]) + " |")
    return lines


def _cells(block: dict, key: str) -> list[str]:
    base, adapter = block.get("base", {}).get(key), block.get("adapter", {}).get(key)
    if not _is_number(adapter):
        return ["-", "-", "-"]
    if not _is_number(base):
        return ["-", fmt_interval(key, adapter, bounds_of(block, "adapter", key)), "-"]
    return [fmt_interval(key, base, bounds_of(block, "base", key)),
            fmt_interval(key, adapter, bounds_of(block, "adapter", key)),
            fmt_interval(key, adapter - base, bounds_of(block, "change", key), sign=True)]


def data_lines(result: dict) -> list[str]:
    """What was scored, in words: the in-domain sample, the out-of-domain one (or why not), what brackets mean."""
    seed = f" (seed {result['seed']})" if "seed" in result else ""
    lines = [f"- In domain: {result['n']} examples from the `{result['split']}` split{seed}."]
    ood = result.get("ood")
    if scored_ood(result):
        lines.append(f"- Out of domain (the OOD columns): {ood.get('n', '?')} examples from `{ood.get('dataset')}`, "
                     f"`{ood.get('split')}` split, the same prompt template.")
    elif isinstance(ood, dict) and ood.get("skipped"):
        lines.append(f"- Out of domain: `{ood.get('dataset')}` not scored: {ood['skipped']}")
    if bounds_of(result, "change", result["metric"]):
        resamples = result["intervals"].get("resamples", "?")
        lines.append(f"- In brackets: 95% bootstrap intervals ({resamples} resamples of the examples); the change's "
                     "is paired (the same resamples for both), and one that contains 0 means the difference may "
                     "be noise.")
    return lines


def task_markdown(result: dict, png_name: str) -> str:
    lines = [f"# {result['name']} — adapter vs base on `{result['task']}`", "",
             *data_lines(result), "", f"Greedy decoding. Main metric: **{result['metric']}**.", "",
             *score_table(result)]
    secs = result.get("seconds", {})
    if secs:
        lines += ["", f"Generation time (in domain): base {secs.get('base')} s, adapter {secs.get('adapter')} s."]
    lines += ["", f"![base vs adapter]({png_name})", "", "## Examples", ""]
    for i, ex in enumerate(result.get("examples", []), 1):
        prompt = ex["prompt"] if len(ex["prompt"]) < 600 else ex["prompt"][:400] + " [...] " + ex["prompt"][-150:]
        lines += [f"### Example {i}", "", "```text", prompt, "```", "",
                  "| | answer |", "|---|---|",
                  f"| reference | {_cell(ex['reference'])} |", f"| base | {_cell(ex['base'])} |",
                  f"| adapter | {_cell(ex['adapter'])} |", ""]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:400] or "*(empty)*"


def plot_task(path: Path, result: dict, loss_log: list[dict] | None) -> None:
    """Bars of base vs adapter (0-100, with 95% intervals as error bars) in domain and out of domain, and the
    training loss when there is a log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [("in domain", result)] + ([(f"out of domain: {scored_ood(result)['dataset']}", scored_ood(result))]
                                        if scored_ood(result) else [])
    ncols = len(blocks) + (1 if loss_log else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 3.6), squeeze=False)
    for ax, (label, block) in zip(axes[0], blocks):
        _bars(ax, block, list(result["adapter"]))
        ax.set_title(f"{result['name']}, {label} (n={block['n']})")
    if loss_log:
        ax2 = axes[0][-1]
        ax2.plot([h["step"] for h in loss_log], [h["loss"] for h in loss_log], color="#d9534f")
        ax2.set_xlabel("step")
        ax2.set_ylabel("training loss (answer tokens)")
        ax2.set_title("training loss")
    save_figure(fig, path)


def _bars(ax, block: dict, metrics: list[str]) -> None:
    """Base and adapter bars per metric on 0-100, each with its 95% interval when the block has one."""
    xs = range(len(metrics))
    for offset, side, color in ((-0.2, "base", "#9aa5b1"), (0.2, "adapter", "#2f7ed8")):
        values = [block[side].get(m, 0) * points(m) for m in metrics]
        errors = [_error_bar(bounds_of(block, side, m), v, points(m)) for m, v in zip(metrics, values)]
        ax.bar([x + offset for x in xs], values, 0.4, label=side, color=color, yerr=list(zip(*errors)), capsize=3)
    ax.set_xticks(list(xs), metrics)
    ax.set_ylim(0, 100)  # the same scale in and out of domain
    ax.set_ylabel("score (0-100; whiskers: 95% interval)")
    ax.legend()


def _error_bar(bounds, value: float, scale: float) -> tuple[float, float]:
    """(below, above) the bar; none without an interval (a percentile interval may even miss the value)."""
    if bounds is None:
        return 0.0, 0.0
    return max(0.0, value - bounds[0] * scale), max(0.0, bounds[1] * scale - value)


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write a PNG atomically (a reader never sees half a plot) and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)


def read_loss_log(adapter_dir: Path) -> list[dict] | None:
    f = adapter_dir / "training.json"
    try:
        return json.loads(f.read_text()).get("loss_log") or None
    except (OSError, ValueError):
        return None


# ---- blends: each task's score as a fraction of its own adapter's -------------------------------------------
def write_combination_report(zoo, results: list[dict]) -> Path:
    """`reports/combinations.{md,json,png}` from `zoo.combine.search` rows (best first, the kept one `chosen`)."""
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
            cells.append("-" if c is None else f"{fmt_fraction(c['fraction'])} ({c['score']:.3g} / {c['own']:.3g})")
        name = f"**{r['name']}**" if r.get("chosen") else r["name"]
        lines.append(f"| {name} | {r.get('n') or ''} | " + " | ".join(cells) +
                     f" | {fmt_fraction(r['mean_fraction'])} |")
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
    save_figure(fig, path, dpi=100)
