"""The learning-curve study's report: one Markdown table per task and one plot (metric vs training examples, with
the 95% intervals and the base's score; settings varied at one size as separate markers)."""

from __future__ import annotations

from pathlib import Path

TARGETS = {"sentiment": 0.90, "qa": 40.0, "summarization": 28.0}  # issue 20, on the AVX2-only kind of machine


def shown(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric == "accuracy" else f"{value:.1f}"


def task_table(points: list[dict]) -> str:
    metric = points[0]["metric"]
    lines = [f"| examples | varied | trained with | {metric} (95% interval) | base | train s | examples/s | eval n |",
             "|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["examples"], sorted(p["setting"].items()))):
        low, high = p["interval"]
        setting = ", ".join(f"{k}={v}" for k, v in p["setting"].items()) or "-"
        used = ", ".join(f"{k} {v}" for k, v in p.get("resolved", {}).items() if v is not None)
        lines.append(f"| {p['examples']} | {setting} | {used} | {shown(p['adapter'], metric)} ({shown(low, metric)}-"
                     f"{shown(high, metric)}) | {shown(p['base'], metric)} | {p['train_seconds']:.0f} | "
                     f"{p['examples_per_second']:.2f} | {p['n']} |")
    return "\n".join(lines)


def plot(by_task: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(by_task), figsize=(4.2 * len(by_task), 3.6), squeeze=False)
    for ax, (task, points) in zip(axes[0], sorted(by_task.items())):
        curve = sorted((p for p in points if not p["setting"]), key=lambda p: p["examples"])
        x = [p["examples"] for p in curve]
        y = [p["adapter"] for p in curve]
        err = [[p["adapter"] - p["interval"][0] for p in curve], [p["interval"][1] - p["adapter"] for p in curve]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="adapter (settings of the time)")
        for p in points:
            if p["setting"]:
                label = ", ".join(f"{k}={v}" for k, v in p["setting"].items())
                ax.scatter([p["examples"]], [p["adapter"]], marker="x", zorder=3)
                ax.annotate(label, (p["examples"], p["adapter"]), fontsize=7, xytext=(4, 2),
                            textcoords="offset points")
        ax.axhline(points[0]["base"], color="grey", linestyle=":", label="base")
        if task in TARGETS:
            ax.axhline(TARGETS[task], color="red", linestyle="--", linewidth=0.8, label="target (issue 20)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training examples")
        ax.set_ylabel(points[0]["metric"])
        ax.set_title(task)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out: Path) -> Path:
    """`out`/README.md and `out`/curves.png from the study's results."""
    from zoo.fsutil import atomic_write_text

    by_task: dict[str, list[dict]] = {}
    for point in results.values():
        by_task.setdefault(point["task"], []).append(point)
    out.mkdir(parents=True, exist_ok=True)
    if by_task:
        plot(by_task, out / "curves.png")
    machines = sorted({p["machine"] for p in results.values()})
    parts = ["# Learning curves of the built-in tasks",
             "", "Written by `python -m zoo.bench.curves` (rebuild: `--report-only`); raw points in `results.json`.",
             f"Machine: {'; '.join(machines) or 'none yet'}. Each point trains one adapter with `zoo train TASK "
             "--max-examples N` (plus the setting shown) and scores it against the base on the same validation "
             "sample (seed 0, as `zoo eval` draws it).", "", "![learning curves](curves.png)"]
    for task, points in sorted(by_task.items()):
        parts += ["", f"## {task}", "", task_table(points)]
    path = out / "README.md"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
