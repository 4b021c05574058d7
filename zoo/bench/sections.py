"""The bench's sections: training (ours vs the reference recipe), inference, memory and the router.

Each returns (or fills) the part of the result it is named after; `zoo.bench.run` decides which run.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from zoo.bench.config import ADAPTER_TASKS, MB, BenchConfig
from zoo.bench.measure import gpu_memory, progress
from zoo.bench.workers import run_worker
from zoo.errors import ZooError


# training ------------------------------------------------------------------------------------
def training_recipes(cfg: BenchConfig, device: str) -> list[tuple[str, str, bool]]:
    """(recipe, worker kind, match our dtype) for each training run of one task.

    The reference computes in fp32 on a CPU, as the recipe does. Where `zoo train` picks bf16 (a CPU with
    AVX512-BF16), part of the speedup is that choice; `reference_same_dtype` adds a reference run in our
    dtype, so the recipe's own share is on record too (`speedup_same_dtype`)."""
    from zoo.base import pick_compute_dtype
    from zoo.bench.reference import reference_dtype

    recipes = [("ours", "train-ours", False), ("reference", "train-reference", False)]
    if cfg.reference_same_dtype and reference_dtype(device) != pick_compute_dtype(device):
        recipes.append(("reference_same_dtype", "train-reference", True))
    return recipes


def bench_training(cfg: BenchConfig, work_zoo: Path, device: str, out: dict) -> None:
    """Each recipe on each task in its own fresh process: examples/s, tokens/s, peak memory. Fills `out` task
    by task, so the tasks already done survive a failure."""
    recipes = training_recipes(cfg, device)
    for task in cfg.tasks:
        runs = {}
        for recipe, kind, match in recipes:
            progress(f"training {task} with the {recipe} recipe ({cfg.train_examples} examples)...")
            job = {"kind": kind, "task": task, "examples": cfg.train_examples, "base": cfg.base, "device": device,
                   "data_dir": cfg.data_dir, "zoo": str(work_zoo), "name": f"{recipe.replace('_', '-')}-{task}",
                   "match_dtype": match}
            runs[recipe] = x = run_worker(job, cfg.isolate)
            progress(f"  {x['examples_per_s']} examples/s, {x['tokens_per_s']} tokens/s, "
                     f"{x['train_seconds']} s, peak RSS {x['peak_rss_mb']} MB")
        if cfg.memory_matched:  # ours again, with the reference's peak as its memory budget
            budget = f"{runs['reference']['peak_rss_mb']}MB"
            progress(f"training {task} with the ours recipe within the reference's {budget}...")
            job = {**job, "kind": "train-ours", "name": f"ours-in-reference-memory-{task}", "max_memory": budget,
                   "match_dtype": False}
            runs["ours_in_reference_memory"] = x = run_worker(job, cfg.isolate)
            progress(f"  {x['examples_per_s']} examples/s, peak RSS {x['peak_rss_mb']} MB")
        out[task] = {**runs, "speedup": _ratio(runs["ours"], runs["reference"])}
        if "reference_same_dtype" in runs:
            out[task]["speedup_same_dtype"] = _ratio(runs["ours"], runs["reference_same_dtype"])
        if "ours_in_reference_memory" in runs:
            out[task]["speedup_in_reference_memory"] = _ratio(runs["ours_in_reference_memory"], runs["reference"])


def _ratio(ours: dict, reference: dict) -> float:
    return round(ours["examples_per_s"] / reference["examples_per_s"], 2)


def score_trained(runtime, cfg: BenchConfig, training: dict) -> None:
    """The validation metric each trained adapter reaches, on the same seeded rows for both recipes."""
    from tasks import spec_for_adapter
    from zoo.evaluation import eval_rows, prompt_ids, run_outputs, score_outputs

    for task, result in training.items():
        spec = spec_for_adapter(runtime.zoo, f"ours-{task}")  # both recipes trained this very spec
        if cfg.gen_new_tokens:  # tiny runs: a short answer budget everywhere
            spec = replace(spec, max_new_tokens=cfg.gen_new_tokens)
        rows = eval_rows(spec, cfg.eval_n, cfg.data_dir)
        ids = prompt_ids(runtime, spec, rows)
        for recipe in ("ours", "reference"):
            progress(f"scoring {recipe}-{task} on {len(rows)} validation rows...")
            outputs, _ = run_outputs(runtime, spec, ids, f"{recipe}-{task}", cfg.gen_batch)
            scores = score_outputs(spec, outputs, rows)
            result[recipe]["metric"] = {"name": spec.primary_metric, "value": scores[spec.primary_metric],
                                        "all": scores, "n": len(rows)}


# inference -----------------------------------------------------------------------------------
def timed_generation(runtime, ids, adapters, new_tokens: int, batch: int, repeats: int, exact: bool = False) -> dict:
    """Best of `repeats` runs: seconds, examples/s and tokens/s (answer tokens, re-tokenized). `exact`: every
    answer runs to `new_tokens` (end-of-text held off), so runs on different adapters do the same work."""
    best, outputs = None, []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        outputs = runtime.generate_ids(ids, adapters, new_tokens, batch, min_new_tokens=new_tokens if exact else 0)
        seconds = time.perf_counter() - t0
        best = seconds if best is None else min(best, seconds)
    tokens = sum(len(runtime.tokenizer(o, add_special_tokens=False)["input_ids"]) + 1 for o in outputs)
    return {"prompts": len(ids), "batch_size": batch, "seconds": round(best, 3),
            "examples_per_s": round(len(ids) / best, 2), "tokens_per_s": round(tokens / best, 1),
            "answer_tokens": tokens, "outputs": outputs}


def task_ids(runtime, task: str, n: int, data_dir) -> list[list[int]]:
    """Token ids of `n` validation prompts of a built-in task."""
    from tasks import get_task
    from zoo.evaluation import eval_rows, prompt_ids

    spec = get_task(task)
    return prompt_ids(runtime, spec, eval_rows(spec, n, data_dir))


def batching(runtime, ids, adapter: str, new_tokens: int, cfg: BenchConfig) -> dict:
    """The same prompts in batches of `gen_batch` and one at a time; greedy, so the answers should agree."""
    runtime.generate_ids(ids[:2], adapter, 2, 2)  # warm-up: adapter loaded, kernels ready
    batched = timed_generation(runtime, ids, adapter, new_tokens, cfg.gen_batch, cfg.repeats)
    single = timed_generation(runtime, ids, adapter, new_tokens, 1, cfg.repeats)
    same = sum(a == b for a, b in zip(batched.pop("outputs"), single.pop("outputs")))
    return {"adapter": adapter, "max_new_tokens": new_tokens, "batched": batched, "one_at_a_time": single,
            "same_answers": f"{same}/{len(ids)}",
            "speedup": round(batched["tokens_per_s"] / single["tokens_per_s"], 2)}


def mixing(runtime, ids, trio: list[str], cfg: BenchConfig) -> dict:
    """One batch whose prompts go to three adapters vs the same batch all on the first: what mixing costs. Every
    answer runs to the full budget in both, so that an adapter that answers shorter does not pass for speed."""
    names = [trio[i % len(trio)] for i in range(len(ids))]
    runtime.generate_ids(ids[:3], names[:3], 2, 3)
    one = timed_generation(runtime, ids, trio[0], cfg.mixed_new_tokens, cfg.gen_batch, cfg.repeats, exact=True)
    mixed = timed_generation(runtime, ids, names, cfg.mixed_new_tokens, cfg.gen_batch, cfg.repeats, exact=True)
    one.pop("outputs"), mixed.pop("outputs")
    return {"single_adapter": {**one, "adapters": trio[:1]}, "mixed_adapters": {**mixed, "adapters": trio},
            "max_new_tokens": cfg.mixed_new_tokens,
            # same prompts, same number of tokens: the time ratio is what mixing costs
            "ratio": round(mixed["examples_per_s"] / one["examples_per_s"], 3)}


def eval_adapter(runtime, task: str, names: list[str]) -> str:
    """The adapter `zoo eval` would run on `task`'s prompts here: ours, else a trained one of the user's, else
    the plain base (a random adapter never stops early, so its answers would not be eval-like)."""
    from zoo.serving.runtime import NONE

    if f"ours-{task}" in names:
        return f"ours-{task}"
    entries = runtime.zoo.entries()
    return next((n for n in names if n in entries and entries[n].task == task and entries[n].kind != "random"),
                NONE)


def eval_style(runtime, cfg: BenchConfig, names: list[str]) -> dict:
    """What `zoo eval` does: each built-in task's validation prompts with the task's own answer budget, batched
    vs one at a time. The bar's ratio is over all tasks together (answer tokens / seconds)."""
    from tasks import get_task

    per_task = {}
    for task in ADAPTER_TASKS:
        ids = task_ids(runtime, task, cfg.gen_prompts, cfg.data_dir)
        adapter = eval_adapter(runtime, task, names)
        budget = cfg.gen_new_tokens or get_task(task).max_new_tokens
        progress(f"eval-style generation: {len(ids)} {task} prompts on {adapter}, batch {cfg.gen_batch} vs 1...")
        per_task[task] = batching(runtime, ids, adapter, budget, cfg)

    def rate(key: str) -> float:
        runs = [r[key] for r in per_task.values()]
        return sum(r["answer_tokens"] for r in runs) / max(sum(r["seconds"] for r in runs), 1e-9)

    return {"tasks": per_task, "batched_tokens_per_s": round(rate("batched"), 1),
            "one_at_a_time_tokens_per_s": round(rate("one_at_a_time"), 1),
            "speedup": round(rate("batched") / rate("one_at_a_time"), 2)}


def first_token_ms(runtime, adapter: str, reps: int) -> dict:
    """`Runtime.generate` of one token for a short prompt: prompt to first answer token, median and min."""
    prompt = "Is this review positive or negative? A warm, funny and moving film."
    runtime.generate(prompt, adapter=adapter, max_new_tokens=1)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        runtime.generate(prompt, adapter=adapter, max_new_tokens=1)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median": round(times[len(times) // 2], 1), "min": round(times[0], 1), "reps": reps}


def bench_inference(runtime, cfg: BenchConfig, adapters: list[str]) -> dict:
    """Eval-style batching (every task, its own answer budget), mixed-adapter batches, first-token latency."""
    evals = eval_style(runtime, cfg, adapters)
    dialogues = task_ids(runtime, "summarization", cfg.mixed_prompts, cfg.data_dir)
    progress(f"mixed batch: {len(dialogues)} dialogues over {adapters[:3]} vs all on {adapters[0]}...")
    mixed = mixing(runtime, dialogues, adapters[:3], cfg)
    return {"eval_style": evals, "mixed": mixed,
            "batched_eval_speedup": evals["speedup"], "mixed_batch_ratio": mixed["ratio"],
            "first_token_ms": first_token_ms(runtime, adapters[0], cfg.latency_reps),
            "dense_weight_mb": round(runtime.dense_weight_bytes / MB, 1), "gpu": gpu_memory(runtime.loaded.device)}


# memory --------------------------------------------------------------------------------------
def bench_memory(cfg: BenchConfig, work_zoo: Path, names: list[str], device: str) -> dict:
    """Base in NF4 vs full fp32, and one runtime's RSS with 1, 3 and all adapters, each in a fresh process."""
    progress(f"memory: base in NF4 and in fp32, runtime with 1/3/{len(names)} adapters"
             f"{' (fresh processes)' if cfg.isolate else ''}...")
    nf4 = run_worker({"kind": "base-rss", "base": cfg.base, "quant": True, "device": device}, cfg.isolate)
    fp32 = run_worker({"kind": "base-rss", "base": cfg.base, "quant": False, "device": device, "dtype": "fp32"},
                      cfg.isolate)
    counts = sorted({1, min(3, len(names)), len(names)})
    rt = run_worker({"kind": "runtime-rss", "base": cfg.base, "device": device, "zoo": str(work_zoo),
                     "names": names, "counts": counts}, cfg.isolate)
    rss = rt["rss_mb"]
    return {"base_nf4": nf4, "base_fp32": fp32, "runtime": rt,
            "rss_10_over_1": round(rss[str(len(names))] / rss["1"], 3), "adapters_loaded": len(names)}


# router --------------------------------------------------------------------------------------
def router_prompts(cfg: BenchConfig) -> list[str]:
    """Validation prompts of the three built-in tasks, interleaved, phrased with every template in turn."""
    from tasks import get_task
    from zoo.evaluation import eval_rows

    per_task = -(-cfg.router_prompts // len(ADAPTER_TASKS))
    lists = []
    for task in ADAPTER_TASKS:
        spec = get_task(task)
        lists.append([spec.prompt(r, i) for i, r in enumerate(eval_rows(spec, per_task, cfg.data_dir, seed=1))])
    mixed = [p for group in zip(*lists) for p in group]
    return (mixed * (cfg.router_prompts // max(1, len(mixed)) + 1))[:cfg.router_prompts]


def get_router(user_zoo, work_zoo, data_dir, fit_args: dict) -> tuple[object, str]:
    """The user's zoo's router when it has one, else one fitted here on the built-in tasks (work zoo)."""
    import router

    if user_zoo is not None and user_zoo.router_dir.exists():
        try:
            return router.load_router(user_zoo), f"loaded from {user_zoo.root}"
        except ZooError:
            pass
    t0 = time.perf_counter()
    fitted = router.fit_router(work_zoo, tasks=list(ADAPTER_TASKS), data_dir=data_dir, **fit_args)
    return fitted, f"fitted here on {', '.join(ADAPTER_TASKS)} in {time.perf_counter() - t0:.1f} s"


def bench_router(cfg: BenchConfig, user_zoo, work_zoo) -> dict:
    """Per-prompt latency (p50/p99, one prompt per call) and throughput for one batch of all prompts."""
    import numpy as np

    rtr, source = get_router(user_zoo, work_zoo, cfg.data_dir, dict(cfg.router_fit))
    prompts = router_prompts(cfg)
    progress(f"router: {cfg.router_single} prompts one by one, then a batch of {len(prompts)}...")
    rtr.route(prompts[:8])  # warm-up
    lat = []
    for p in prompts[:cfg.router_single]:
        t0 = time.perf_counter()
        rtr.route([p])
        lat.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    routes = rtr.route(prompts)
    seconds = time.perf_counter() - t0
    return {"router": source, "single_prompts": len(lat),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "batch_prompts": len(prompts), "batch_seconds": round(seconds, 3),
            "prompts_per_s": round(len(prompts) / max(seconds, 1e-9), 1),
            "routes": {r: sum(x["route"] == r for x in routes) for r in sorted({x["route"] for x in routes})}}
