"""Evaluation reports: Markdown for people, JSON for scripts, a PNG people would rather look at.

One adapter against the base on its task (`write_task_report`, `zoo eval`), and blends against their parents'
own adapters on every parent task (`write_combination_report`, `zoo combine --search` / `--report`). Numbers are
shown as `zoo.metrics.METRICS` says.
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


def task_markdown(result: dict, png_name: str) -> str:
    base, adapter = result["base"], result["adapter"]
    lines = [
        f"# {result['name']} — adapter vs base on `{result['task']}`", "",
        f"{result['n']} examples from the `{result['split']}` split (seed {result['seed']}), greedy decoding. "
        f"Main metric: **{result['metric']}**.", "",
        "| metric | base | adapter | change |", "|---|---|---|---|",
    ]
    for m in adapter:
        delta = adapter[m] - base.get(m, 0.0)
        lines.append(f"| {m} | {fmt(m, base.get(m, 0.0))} | {fmt(m, adapter[m])} | {delta:+.3g} |")
    secs = result.get("seconds", {})
    if secs:
        lines += ["", f"Generation time: base {secs.get('base')} s, adapter {secs.get('adapter')} s."]
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(result["adapter"])
    ncols = 2 if loss_log else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 3.6), squeeze=False)
    ax = axes[0][0]
    xs = range(len(metrics))
    norm = [points(m) for m in metrics]  # plot everything on 0-100
    ax.bar([x - 0.2 for x in xs], [result["base"].get(m, 0) * s for m, s in zip(metrics, norm)], 0.4,
           label="base", color="#9aa5b1")
    ax.bar([x + 0.2 for x in xs], [result["adapter"][m] * s for m, s in zip(metrics, norm)], 0.4,
           label="adapter", color="#2f7ed8")
    ax.set_xticks(list(xs), metrics)
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"{result['name']}: base vs adapter (n={result['n']})")
    ax.legend()
    if loss_log:
        ax2 = axes[0][1]
        ax2.plot([h["step"] for h in loss_log], [h["loss"] for h in loss_log], color="#d9534f")
        ax2.set_xlabel("step")
        ax2.set_ylabel("training loss (answer tokens)")
        ax2.set_title("training loss")
    save_figure(fig, path)


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
