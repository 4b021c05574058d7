"""Per-task evaluation reports: Markdown for people, JSON for scripts, a PNG people would rather look at."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.fsutil import atomic_write_json, atomic_write_text

SCALE = {"accuracy": 1.0, "macro_f1": 1.0}  # the rest are 0-100 points


def write_task_report(reports_dir: Path, result: dict, loss_log: list[dict] | None = None) -> Path:
    """Write `<name>.md/.json/.png` and return the Markdown path."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = reports_dir / result["name"]
    atomic_write_json(stem.with_suffix(".json"), result)
    plot_task(stem.with_suffix(".png"), result, loss_log)
    atomic_write_text(stem.with_suffix(".md"), task_markdown(result, stem.with_suffix(".png").name))
    return stem.with_suffix(".md")


def fmt(metric: str, value: float) -> str:
    return f"{value:.3f}" if SCALE.get(metric) == 1.0 else f"{value:.1f}"


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
    norm = [100 * SCALE.get(m, 0.01) for m in metrics]  # plot everything on 0-100
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
