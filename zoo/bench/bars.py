"""The verdicts: the headline ratios at the top of a result, and one PASS/FAIL bar per claim."""

from __future__ import annotations

QUICK_LIMIT_S = 600  # `zoo bench --quick` promises a whole run in under 10 minutes
RATIO_BARS = (  # (text, result key, passes)
    ("batched eval >= 3x tokens/s of one at a time", "batched_eval_speedup", lambda v: v >= 3),
    ("mixed batch >= 0.8x single-adapter throughput", "mixed_batch_ratio", lambda v: v >= 0.8),
    ("10 adapters add < 15% RSS over 1", "rss_10_over_1", lambda v: v < 1.15),
    ("zoo serve: 16 concurrent clients >= 3x tokens/s of one at a time", "serve_concurrency_speedup",
     lambda v: v >= 3),
    ("zoo serve: short requests' p95 time to first token with 4 long ones running <= 2x alone",
     "serve_hol_ttft_ratio", lambda v: v <= 2),
)


def headline(result: dict) -> dict:
    """The ratios the bars are about, at the top level of the result."""
    inf, mem, serve = result.get("inference", {}), result.get("memory", {}), result.get("serve", {})
    return {"train_speedup": {t: r["speedup"] for t, r in result.get("train", {}).items()},
            "batched_eval_speedup": inf.get("batched_eval_speedup"),
            "mixed_batch_ratio": inf.get("mixed_batch_ratio"), "rss_10_over_1": mem.get("rss_10_over_1"),
            "serve_concurrency_speedup": serve.get("concurrency_speedup"),
            "serve_ttft_p95_ms": serve.get("concurrent", {}).get("ttft_p95_ms"),
            "serve_hol_ttft_ratio": serve.get("head_of_line", {}).get("ratio"),
            "serve_vs_vllm_tokens_ratio": serve.get("vs_vllm", {}).get("tokens_ratio")}


def train_bar(task: str, t: dict) -> dict:
    """Ours must train at least 3x as fast as the reference and reach at least its metric."""
    ours, ref = t["ours"].get("metric"), t["reference"].get("metric")
    scores = f", {ours['value']:.3g} vs {ref['value']:.3g}" if ours and ref else ", not scored"
    return {"bar": f"train {task}: >= 3x reference examples/s, {(ours or {}).get('name', 'metric')} >= reference",
            "value": f"{t['speedup']}x{scores}",
            "pass": t["speedup"] >= 3 and bool(ours and ref) and ours["value"] >= ref["value"]}


def memory_bar(task: str, t: dict) -> dict:
    """Within the reference's peak RSS (as its budget), ours must stay under that peak."""
    ours, ref = t["ours_in_reference_memory"], t["reference"]
    return {"bar": f"train {task} with the reference's peak RSS as budget: peak RSS <= reference",
            "value": f"{ours['peak_rss_mb']} vs {ref['peak_rss_mb']} MB, {t['speedup_in_reference_memory']}x "
                     "examples/s", "pass": ours["peak_rss_mb"] <= ref["peak_rss_mb"]}


def bars(result: dict) -> list[dict]:
    """PASS/FAIL per bar; a bar whose section did not run is left out, a section that failed is a FAIL."""
    out = [train_bar(task, t) for task, t in result.get("train", {}).items()]
    out += [memory_bar(task, t) for task, t in result.get("train", {}).items() if "ours_in_reference_memory" in t]
    for text, key, passes in RATIO_BARS:
        if result.get(key) is not None:
            out.append({"bar": text, "value": f"{result[key]}x", "pass": bool(passes(result[key]))})
    vs = result.get("serve", {}).get("vs_vllm", {})
    if "tokens_ratio" in vs:
        out.append({"bar": "zoo serve vs vLLM, same requests: >= 1.5x tokens/s and a lower p95 time to first token",
                    "value": f"{vs['tokens_ratio']}x tokens/s, {vs['ttft_p95_ratio']}x TTFT p95",
                    "pass": vs["tokens_ratio"] >= 1.5 and vs["ttft_p95_ratio"] < 1})
    for name, error in result.get("errors", {}).items():
        out.append({"bar": f"section {name} ran", "value": error, "pass": False})
    if result["mode"] == "quick":
        out.append({"bar": "--quick < 10 minutes", "value": f"{result['seconds']:.0f} s",
                    "pass": result["seconds"] < QUICK_LIMIT_S})
    return out
