"""`zoo bench [--quick] [--json]`: our training and runtime vs the textbook QLoRA recipe, in one run.

Prints a table with a PASS/FAIL line per bar (or, with --json, the whole result as one JSON object) and saves
the result with machine info as bench/results-<date>[-quick].json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from zoo.cli import count

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small sizes: the whole bench in under 10 minutes")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: seconds, not meaningful
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests: no fresh processes
    p.add_argument("--json", action="store_true", help="print the whole result as one JSON object")
    p.add_argument("--out", default=None, help="result file or folder (default: bench/ in the repository)")
    p.add_argument("--base", default=None, help="base model (default: the embedded smollm2-135m)")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $ZOO_DATA_DIR, else the Hub)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--only", default=None, help="comma list of sections: train,inference,memory,router,serve")
    p.add_argument("--tasks", default=None, help="comma list of tasks to train (default: sentiment,qa)")
    p.add_argument("--train-examples", type=count(1), default=None, help="examples per recipe per task")
    p.add_argument("--eval-n", type=count(1), default=None, help="validation rows scored per trained adapter")


def run(args) -> int:
    from zoo.bench import config_for, run_bench
    from zoo.store import Zoo

    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    sections, tasks = _names(args.only), _names(args.tasks)
    cfg = config_for(mode, base=args.base, data_dir=args.data_dir, device=args.device, sections=sections, tasks=tasks,
                     train_examples=args.train_examples, eval_n=args.eval_n,
                     isolate=False if args.in_process else None)
    with contextlib.redirect_stdout(sys.stderr):  # trainer logs and progress must not mix into --json
        result = run_bench(cfg, user_zoo=Zoo(args.zoo))
    path = save(result, args.out)
    if args.json:
        print(json.dumps(result))
    else:
        print(render(result))
        print(f"\nsaved {path}")
    for name, error in result.get("errors", {}).items():
        print(f"zoo bench: section {name} failed: {error}", file=sys.stderr)
    return 1 if result.get("errors") else 0


def _names(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def save(result: dict, out: str | None) -> Path:
    from zoo.fsutil import atomic_write_json

    suffix = "" if result["mode"] == "full" else f"-{result['mode']}"
    name = f"results-{time.strftime('%Y-%m-%d')}{suffix}.json"
    path = Path(out) if out else BENCH_DIR / name
    if path.suffix != ".json":
        path = path / name
    atomic_write_json(path, result)
    return path


# the table -------------------------------------------------------------------------------------
def render(r: dict) -> str:
    m = r["machine"]
    lines = [f"zoo bench ({r['mode']}) on {m['cpu']}, {m['cores']} cores, {m['device']} {m['compute_dtype']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v), ""]
    lines += _train_lines(r.get("train", {})) + _inference_lines(r.get("inference"))
    lines += _memory_lines(r.get("memory")) + _router_lines(r.get("router")) + _serve_lines(r.get("serve"))
    a = r.get("adapters", {})
    lines.append(f"adapters used: {len(a.get('from_zoo', []))} from the zoo, {len(a.get('trained_here', []))} "
                 f"trained here, {len(a.get('random', []))} random (task-default LoRA shape)")
    lines += ["", "bars:"] + [f"  {'PASS' if b['pass'] else 'FAIL'}  {b['bar']}: {b['value']}" for b in r["bars"]]
    lines.append(f"\ntotal {r['seconds']:.0f} s")
    return "\n".join(lines)


def _train_lines(train: dict) -> list[str]:
    if not train:
        return []
    out = ["training        recipe              examples/s  tokens/s  peak RSS MB  metric           LoRA"]
    for task, t in train.items():
        for recipe in ("ours", "reference", "reference_same_dtype"):
            if recipe not in t:
                continue
            x = t[recipe]
            metric = x.get("metric", {})
            gpu = f" (GPU peak {x['gpu']['peak_mb']} MB)" if x.get("gpu") else ""
            lora = x["lora"]
            score = f"{metric['name']}={metric['value']:.3g}" if metric else "not scored"
            out.append(f"  {task:<13} {recipe.replace('_same_dtype', ' (=dtype)'):<19} {x['examples_per_s']:>10.2f} "
                       f"{x['tokens_per_s']:>9.1f} {x['peak_rss_mb']:>12.0f}  {score:<16} r={lora['r']} "
                       f"layers={lora['layers']} {lora.get('compute_dtype', '?')}, {lora['loss_on']}, "
                       f"{lora['batching']}{gpu}")
        same = f"; {t['speedup_same_dtype']}x over the reference in our dtype" if "speedup_same_dtype" in t else ""
        out.append(f"  {task:<13} speedup {t['speedup']}x examples/s{same}")
    return out + [""]


def _inference_lines(inf: dict | None) -> list[str]:
    if not inf:
        return []
    ev = inf["eval_style"]
    lines = ["inference", f"  eval-style generation, all tasks: batched {ev['batched_tokens_per_s']} tok/s, one at a "
                          f"time {ev['one_at_a_time_tokens_per_s']} tok/s -> {ev['speedup']}x"]
    for task, x in ev["tasks"].items():
        b, s = x["batched"], x["one_at_a_time"]
        lines.append(f"    {task} ({x['adapter']}, <= {x['max_new_tokens']} new tokens), batch {b['batch_size']}: "
                     f"{b['tokens_per_s']} tok/s, {b['examples_per_s']} ex/s; one at a time: {s['tokens_per_s']} "
                     f"tok/s, {s['examples_per_s']} ex/s -> {x['speedup']}x (same answers {x['same_answers']})")
    one, mix = inf["mixed"]["single_adapter"], inf["mixed"]["mixed_adapters"]
    lines += [f"  one adapter: {one['examples_per_s']} ex/s, {one['tokens_per_s']} tok/s; mixed over "
              f"{len(mix['adapters'])} adapters: {mix['examples_per_s']} ex/s, {mix['tokens_per_s']} tok/s -> "
              f"{inf['mixed_batch_ratio']}x",
              f"  first token (short prompt): median {inf['first_token_ms']['median']} ms", ""]
    return lines


def _memory_lines(mem: dict | None) -> list[str]:
    if not mem:
        return []
    nf4, fp32, rt = mem["base_nf4"], mem["base_fp32"], mem["runtime"]
    ad = rt["adapters"][0] if rt["adapters"] else None
    counts = ", ".join(f"{k}: {v} MB" for k, v in rt["rss_mb"].items())
    lines = ["memory",
             f"  base resident: NF4 {nf4['base_mb']} MB, fp32 {fp32['base_mb']} MB (over a bare import of "
             f"{nf4['bare_mb']} MB)",
             f"  runtime RSS with adapters loaded: {counts} -> 10/1 = {mem['rss_10_over_1']}"
             f" (with {rt.get('dense_weight_mb', 0)} MB of dense weight copies for CPU prefill)"]
    if ad:
        lines.append(f"  one adapter: {ad['disk_bytes'] / 2**20:.1f} MB on disk, {ad['param_bytes'] / 2**20:.1f} MB "
                     f"in memory ({ad['params']:,} parameters)")
    return lines + [""]


def _router_lines(rt: dict | None) -> list[str]:
    if not rt:
        return []
    return ["router", f"  {rt['router']}",
            f"  one prompt per call: p50 {rt['p50_ms']} ms, p99 {rt['p99_ms']} ms; batch of {rt['batch_prompts']}: "
            f"{rt['prompts_per_s']} prompts/s", ""]


def _serve_lines(sv: dict | None) -> list[str]:
    if not sv:
        return []
    lines = ["zoo serve", f"  {sv['concurrent']['requests']} clients over {', '.join(sv['models'])}, <= "
                          f"{sv['max_tokens']} tokens each (same answers {sv['same_answers']})"]
    for name in ("sequential", "concurrent"):
        x = sv[name]
        lines.append(f"  {name:<10} {x['tokens_per_s']} tok/s; latency p50 {x['latency_p50_ms']} / p95 "
                     f"{x['latency_p95_ms']} ms; first token p50 {x['ttft_p50_ms']} / p95 {x['ttft_p95_ms']} ms")
    hol = sv["head_of_line"]
    lines.append(f"  -> {sv['concurrency_speedup']}x; short requests' first token p95 with 4 long ones running "
                 f"{hol['loaded_ttft_p95_ms']} ms vs alone {hol['alone_ttft_p95_ms']} ms -> {hol['ratio']}x")
    return lines + _vllm_lines(sv.get("vs_vllm") or {}) + [""]


def _vllm_lines(vs: dict) -> list[str]:
    if "skipped" in vs or not vs:
        return [f"  vs vLLM: not run ({vs.get('skipped', 'section failed')})"]
    lines = [f"  vs vLLM: {vs['requests']} concurrent {vs['adapter']} requests, <= {vs['max_tokens']} tokens"]
    for engine in ("zoo_serve", "vllm"):
        x = vs[engine]
        score = ", ".join(f"{k} {v:.3g}" for k, v in x["scores"].items())
        lines.append(f"    {engine:<9} {x['tokens_per_s']} tok/s; first token p95 {x['ttft_p95_ms']} ms; latency "
                     f"p95 {x['latency_p95_ms']} ms; {score}")
    return lines + [f"    -> {vs['tokens_ratio']}x tokens/s, {vs['ttft_p95_ratio']}x time to first token p95"]
