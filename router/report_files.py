"""The router report's files: `router.json`, `router.md`, the confusion matrix and the reliability diagram."""

from __future__ import annotations

import numpy as np

from zoo.fsutil import atomic_write_json, atomic_write_text
from zoo.reports import save_figure


def write_files(reports_dir, result: dict) -> None:
    reports_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(reports_dir / "router.json", result)
    plot_confusion(reports_dir / "router_confusion.png", result["confusion"])
    plot_reliability(reports_dir / "router_reliability.png", result["calibration"])
    atomic_write_text(reports_dir / "router.md", markdown(result))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path, confusion: dict) -> None:
    plt = _pyplot()
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
    ax.set_title("Router on the different-generator prompts")
    save_figure(fig, path)


def plot_reliability(path, calibration: dict) -> None:
    """Accuracy against confidence per bin, one line per held-out group; the diagonal is perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for group, marker in (("same-generator", "o"), ("different-generator", "s")):
        rel = calibration[group]["calibrated"]
        conf = [b["confidence"] for b in rel["bins"]]
        acc = [b["accuracy"] for b in rel["bins"]]
        ax.plot(conf, acc, marker=marker, label=f"{group} (ECE {rel['ece']:.3f}, n={rel['n']})")
    ax.set_xlabel("router confidence (top probability)")
    ax.set_ylabel("share routed right")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Reliability (temperature {calibration['temperature']:.2f})")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def _yes(bar: dict) -> str:
    return "yes" if bar["met"] else "**no**"


def bar_lines(result: dict) -> list[str]:
    b = result["bars"]
    rows = [("accuracy, different-generator held-out set", "different_generator_accuracy", ">= {:.0%}", "{:.1%}"),
            ("`none` recall, different-generator set", "none_recall", ">= {:.0%}", "{:.1%}"),
            ("routing regret, worst task (share of its metric)", "regret_share", "<= {:.0%}", "{:.2%}"),
            ("classifier with its features, p50 (1 core)", "classifier_p50_ms", "< {} ms", "{:.1f} ms")]
    lines = ["| | bar | measured | met |", "|---|---|---|---|"]
    for label, key, bar_fmt, value_fmt in rows:
        if key in b:
            lines.append(f"| {label} | {bar_fmt.format(b[key]['bar'])} | {value_fmt.format(b[key]['value'])} | "
                         f"{_yes(b[key])} |")
    return lines


def group_lines(result: dict) -> list[str]:
    routes = result["routes"]
    lines = ["| held-out set | prompts | accuracy | " + " | ".join(routes) + " |",
             "|---|---|---|" + "---|" * len(routes)]
    for group, g in result["groups"].items():
        per = " | ".join(f"{g['per_route'][r]:.1%}" if r in g["per_route"] else "-" for r in routes)
        lines.append(f"| {group} | {g['n']} | {g['accuracy']:.1%} | {per} |")
    return lines


def calibration_lines(result: dict) -> list[str]:
    cal = result["calibration"]
    split = cal.get("calibration_split") or {}
    lines = [f"Temperature {cal['temperature']:.3f}, fit on the calibration split "
             f"({split.get('prompts', '?')} prompts: unseen train rows in the training generator's held-back "
             f"wording); threshold to `none` {cal['threshold']} chosen there "
             f"(`base` policy accuracy by threshold: {split.get('base_accuracy_by_threshold', {})}).", "",
             "| held-out set | ECE calibrated | ECE at temperature 1 | best candidate | base under threshold "
             "| ask under threshold (asked, accuracy of the rest) |", "|---|---|---|---|---|---|"]
    for group in ("same-generator", "different-generator"):
        c, pol = cal[group], cal[group]["policies"]
        ask = pol["ask"]
        lines.append(f"| {group} | {c['calibrated']['ece']:.3f} | {c['ece_uncalibrated']:.3f} | {pol['best']:.1%} "
                     f"| {pol['base']:.1%} | {ask['asked']:.1%}, {ask['accuracy_answered'] or 0:.1%} |")
    return lines + ["", "![reliability diagram](router_reliability.png)"]


def regret_lines(result: dict) -> list[str]:
    reg = result.get("regret")
    if not reg:
        return ["Not measured in this run (it generates answers: `router.regret.routing_regret`)."]
    lines = [f"{reg['n_per_task']} validation rows per task, phrased by templates and both generators.", "",
             "| task | metric | learned routing | perfect routing | all to base | regret | share | routed right |",
             "|---|---|---|---|---|---|---|---|"]
    for task, t in reg["tasks"].items():
        lines.append(f"| {task} | {t['metric']} | {t['learned']:.3f} | {t['perfect']:.3f} | {t['base']:.3f} "
                     f"| {t['regret']:+.3f} | {t['regret_share']:.2%} | {t['routed_right']:.1%} |")
    oos = reg["out_of_scope"]
    return lines + ["", f"Out-of-scope prompts an adapter would answer: {oos['to_an_adapter']:.1%} of {oos['n']}."]


def latency_lines(result: dict) -> list[str]:
    lat = result["latency"]
    lines = [f"{lat['prompts']} prompts routed one at a time, pinned to one CPU core (load average "
             f"{lat['load_average']} while measuring: other work on the machine inflates these times).", "",
             "| part | p50 ms | p95 ms |", "|---|---|---|",
             f"| classifier with its features | {lat['classifier_ms']['p50']:.2f} | {lat['classifier_ms']['p95']:.2f} |"]
    if lat["embedding_ms"]:
        emb = lat["embedding_ms"]
        backend = f", {lat['embedding_backend']}" if lat.get("embedding_backend") else ""
        lines.append(f"| of which the embedding model (MiniLM{backend}) | {emb['p50']:.2f} | {emb['p95']:.2f} |")
    return lines


def markdown(result: dict) -> str:
    lines = ["# Router", "",
             f"Routes: {', '.join(result['routes'])}. Features: `{result['params']['features']}`. "
             "Held-out prompts use validation rows the router never saw; the different-generator set was "
             "written apart from the training prompts (`router.heldout`), with other words and shapes.", "",
             "## Against the bar", "", *bar_lines(result), "", "## Accuracy per route", "", *group_lines(result),
             "", "| set | prompts | accuracy | group |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {v['accuracy']:.1%} | {v['group'] or 'context'} |" for k, v in result["sets"].items()]
    lines += ["", "![confusion matrix](router_confusion.png)", "", "## Calibration and unsure routes", "",
              *calibration_lines(result), "", "## Routing regret", "", *regret_lines(result), "",
              "## Latency per prompt", "", *latency_lines(result), "", "## Misrouted examples", ""]
    for k, v in result["sets"].items():
        for m in v["misses"][:3]:
            lines.append(f"- {k}: `{m['route']}` (p={m['p']}) instead of `{m['gold']}`: {m['prompt'].replace('|', '/')}")
    return "\n".join(lines) + "\n"
