"""`zoo bench`: our recipe and runtime against the textbook ones, side by side, in one run, on one base.

Sections: training (ours vs `zoo.bench_reference`), inference (batched vs one prompt at a time, mixed-adapter
batches, first-token latency), memory (NF4 vs fp32 base, adapters, RSS with 1/3/10 adapters) and the router.
Anything whose peak memory is reported runs in a fresh subprocess (`python -m zoo.bench JOB OUT`), so peaks
never mix. Everything works on a base path too, so tests run the whole bench on a tiny random model.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from zoo.base import DEFAULT_BASE
from zoo.errors import ZooError

TRAIN_TASKS = ("sentiment", "qa")
ADAPTER_TASKS = ("sentiment", "qa", "summarization")  # shapes of the random adapters, in turn
SECTIONS = ("train", "inference", "memory", "router")
MB = 1024 * 1024


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one bench run; `quick` must finish in under 10 minutes on 2 CPU cores."""

    mode: str = "quick"
    base: str = DEFAULT_BASE
    device: str | None = None
    data_dir: str | None = None
    tasks: tuple[str, ...] = TRAIN_TASKS
    sections: tuple[str, ...] = SECTIONS
    train_examples: int = 48  # per recipe per task
    eval_n: int = 40  # validation rows scored per trained adapter
    gen_prompts: int = 32  # prompts per task, batched vs one at a time: whole batches, as most of `zoo eval`'s
    gen_batch: int = 16
    gen_new_tokens: int | None = None  # None: each task's own answer budget
    mixed_prompts: int = 32
    mixed_new_tokens: int = 32
    adapters_total: int = 10  # adapters loaded for the RSS measure
    latency_reps: int = 5
    router_prompts: int = 1000
    router_single: int = 200  # prompts routed one by one for p50/p99
    router_fit: tuple[tuple[str, object], ...] = ()  # extra `fit_router` arguments (tiny runs: a small fit)
    repeats: int = 1  # timed generation runs (best kept)
    reference_same_dtype: bool = False  # also train the reference in our compute dtype when they differ
    isolate: bool = True  # measured jobs in fresh processes; False (tests only) mixes their peaks


PRESETS = {
    "quick": BenchConfig(),
    "full": BenchConfig(mode="full", train_examples=160, eval_n=100, gen_prompts=48, mixed_prompts=64,
                        router_single=500, repeats=3, reference_same_dtype=True),
    "tiny": BenchConfig(mode="tiny", train_examples=8, eval_n=2, gen_prompts=2, gen_batch=2, gen_new_tokens=3,
                        mixed_prompts=3, mixed_new_tokens=3, latency_reps=1, router_prompts=30, router_single=5,
                        router_fit=(("rows_per_task", 12), ("features", "ngrams"), ("n_features", 2**12))),
}


def config_for(mode: str, **overrides) -> BenchConfig:
    return replace(PRESETS[mode], **{k: v for k, v in overrides.items() if v is not None})


# measuring -----------------------------------------------------------------------------------
def rss_bytes(field: str = "VmRSS") -> int:
    """Resident (VmRSS) or peak resident (VmHWM) bytes of this process. VmHWM belongs to this process's own
    memory map, unlike ru_maxrss, which a child inherits from the parent it was spawned from."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: peak only, in KB on most systems

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gpu_memory(device: str | None) -> dict | None:
    """Allocated and peak GPU bytes on a CUDA device (None on CPU)."""
    if not device or not str(device).startswith("cuda"):
        return None
    import torch

    return {"allocated_mb": round(torch.cuda.memory_allocated() / MB, 1),
            "peak_mb": round(torch.cuda.max_memory_allocated() / MB, 1)}


def machine_info(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    import torch

    from zoo.base import pick_compute_dtype

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "device": device,
            "compute_dtype": str(pick_compute_dtype(device)).replace("torch.", ""),
            "versions": {p: ver(p) for p in ("torch", "transformers", "peft", "bitsandbytes", "adapter-zoo")}}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_worker(job: dict, isolate: bool = True) -> dict:
    """Run `job` in a fresh Python process (`python -m zoo.bench`); its output stays off our stdout.
    `isolate=False` runs it here instead (tests: seconds instead of a torch import per job)."""
    if not isolate:
        return WORKERS[job["kind"]](dict(job))
    with tempfile.TemporaryDirectory(prefix="zoo-bench-job-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "zoo.bench", str(job_file), str(out_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or not out_file.exists():
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            raise ZooError(f"bench worker {job['kind']!r} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out_file.read_text())


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# training (workers) --------------------------------------------------------------------------
def bench_spec(task: str, examples: int):
    from tasks import get_task

    return get_task(task).with_overrides(train={"max_examples": examples})


def step_timer():
    """A Trainer callback that stamps the start, every optimizer step and the end of training."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []

        def on_train_begin(self, *args, **kwargs):
            self.marks = [time.perf_counter()]

        def on_step_end(self, *args, **kwargs):
            self.marks.append(time.perf_counter())

        def on_train_end(self, *args, **kwargs):
            self.marks.append(time.perf_counter())

    return StepTimer()


def _train_result(task, recipe, seconds, examples, tokens, load_s, lora, device, final_loss, marks) -> dict:
    """Throughput over the whole `trainer.train()` (what a user waits for), plus the step times: the first
    step carries one-off warm-up, and after the last comes saving (ours checkpoints, the reference does not).
    Both recipes are timed by the same callback, from `on_train_begin` to `on_train_end`."""
    seconds = max(marks[-1] - marks[0] if len(marks) > 1 else seconds, 1e-3)
    steps = [round(b - a, 2) for a, b in zip(marks, marks[1:-1])]
    per_step = examples / max(1, len(steps))
    steady = per_step * (len(steps) - 1) / max(sum(steps[1:]), 1e-3) if len(steps) > 1 else None
    return {"task": task, "recipe": recipe, "examples": examples, "tokens": tokens,
            "train_seconds": round(seconds, 2), "load_seconds": round(load_s, 2),
            "examples_per_s": round(examples / seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "step_seconds": steps, "after_last_step_seconds": round(marks[-1] - marks[-2], 2) if steps else None,
            "steady_examples_per_s": round(steady, 3) if steady else None,
            "peak_rss_mb": round(rss_bytes("VmHWM") / MB, 1), "gpu": gpu_memory(device), "lora": lora,
            "final_loss": final_loss}


def worker_train_ours(job: dict) -> dict:
    from zoo.base import load_base
    from zoo.store import Zoo
    from zoo.train import train_adapter

    spec = bench_spec(job["task"], job["examples"])
    t0 = time.perf_counter()
    loaded = load_base(job["base"], quant=True, device=job["device"])
    load_s = time.perf_counter() - t0
    timer = step_timer()
    entry = train_adapter(Zoo(job["zoo"]), spec, loaded, name=job["name"], data_dir=job["data_dir"],
                          callbacks=[timer])
    lora = {**asdict(spec.lora), "target_modules": spec.lora.module_names(),
            "layers": spec.lora.layers or "all", "gradient_checkpointing": spec.train.gradient_checkpointing,
            "loss_on": "answer tokens", "batching": "packed",
            "compute_dtype": str(loaded.compute_dtype).replace("torch.", "")}
    return _train_result(job["task"], "ours", entry["throughput"]["seconds"], entry["data"]["examples"],
                         entry["data"]["tokens"], load_s, lora, loaded.device, entry.get("final_loss"), timer.marks)


def worker_train_reference(job: dict) -> dict:
    from zoo.bench_reference import train_reference
    from zoo.base import resolve_base
    from zoo.data import load_rows
    from zoo.fsutil import replace_dir
    from zoo.store import Zoo

    spec = bench_spec(job["task"], job["examples"])
    rows = load_rows(spec, spec.train_split, job["data_dir"], limit=spec.train.max_examples, seed=spec.train.seed)
    zoo, ref = Zoo(job["zoo"]), resolve_base(job["base"])
    out = Path(tempfile.mkdtemp(prefix="zoo-bench-ref-"))
    try:
        timer = step_timer()
        r = train_reference(spec, ref.path, rows, out, job["device"], callbacks=[timer],
                            match_dtype=job.get("match_dtype", False))
        with zoo.lock():
            replace_dir(out / "adapter", zoo.adapter_dir(job["name"]))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    zoo.put(job["name"], {"name": job["name"], "task": spec.name, "kind": "bench-reference",
                          "base": {"id": ref.id, "hash": ref.hash, "quantized": True}, "lora": r["lora"],
                          "path": f"adapters/{job['name']}", "metrics": {}})
    return _train_result(job["task"], "reference", r["seconds"], r["examples"], r["tokens"], r["load_seconds"],
                         r["lora"], job["device"], r["final_loss"], timer.marks)


# memory (workers) ----------------------------------------------------------------------------
BARE_IMPORTS = "torch, transformers, bitsandbytes"  # the libraries either base needs, loaded before measuring


def touch(model) -> None:
    """One short forward pass and a read of every weight: lazily mapped weights count once they are used."""
    import torch

    with torch.inference_mode():
        for t in [*model.parameters(), *model.buffers()]:
            t.sum()
        model(input_ids=torch.tensor([[1, 2, 3, 4]], device=model.device), use_cache=False)


def worker_base_rss(job: dict) -> dict:
    """RSS after a bare import of the libraries, then after loading the base (NF4 or fp32) and using it."""
    import bitsandbytes  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from zoo.base import load_base

    bare = rss_bytes()
    old = os.environ.get("ZOO_DTYPE")
    os.environ["ZOO_DTYPE"] = job.get("dtype") or old or "auto"
    try:
        loaded = load_base(job["base"], quant=job["quant"], device=job["device"])
    finally:
        os.environ.pop("ZOO_DTYPE") if old is None else os.environ.__setitem__("ZOO_DTYPE", old)
    touch(loaded.model)
    return {"bare_imports": BARE_IMPORTS, "bare_mb": round(bare / MB, 1), "loaded_mb": round(rss_bytes() / MB, 1),
            "base_mb": round((rss_bytes() - bare) / MB, 1), "quantized": loaded.quantized,
            "dtype": str(loaded.compute_dtype).replace("torch.", ""), "gpu": gpu_memory(loaded.device)}


def adapter_param_bytes(runtime, name: str) -> dict:
    """Parameter count and bytes of one loaded adapter (its lora_A/lora_B tensors)."""
    params = runtime.adapter_parameters(name)
    return {"params": sum(p.numel() for p in params),
            "param_bytes": sum(p.numel() * p.element_size() for p in params)}


def worker_runtime_rss(job: dict) -> dict:
    """RSS of one runtime as adapters are added: bare imports, base loaded and used, then 1, 3, ... adapters."""
    import bitsandbytes  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    bare = rss_bytes()
    from zoo.serving.runtime import Runtime
    from zoo.store import Zoo

    zoo = Zoo(job["zoo"])
    rt = Runtime(zoo, base=job["base"], device=job["device"])
    touch(rt.loaded.model)
    rt.release_memory()
    steps = {"base": round(rss_bytes() / MB, 1)}
    names = job["names"]
    for count in job["counts"]:
        for name in names[:count]:
            rt.load_adapter(name)
        rt.release_memory()
        steps[str(count)] = round(rss_bytes() / MB, 1)
    sizes = [{"name": n, "disk_bytes": (zoo.adapter_dir(n) / "adapter_model.safetensors").stat().st_size,
              **adapter_param_bytes(rt, n)} for n in names]
    gpu = gpu_memory(rt.loaded.device)
    rt.close()
    return {"bare_mb": round(bare / MB, 1), "rss_mb": steps, "adapters": sizes, "gpu": gpu,
            "dense_weight_mb": round(rt.dense_weight_bytes / MB, 1)}  # in every step above (zoo.serving.dense)


WORKERS = {"train-ours": worker_train_ours, "train-reference": worker_train_reference,
           "base-rss": worker_base_rss, "runtime-rss": worker_runtime_rss}


def worker_main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    result = WORKERS[job["kind"]](job)
    Path(argv[1]).write_text(json.dumps({**result, "pid": os.getpid()}))
    return 0


# the work zoo --------------------------------------------------------------------------------
def copy_zoo_adapters(src, dst, ref, limit: int) -> list[str]:
    """The user's healthy adapters on this base, copied into the bench's own zoo (the user's stays untouched)."""
    from zoo.base import check_same_base

    names = []
    if src is None or not src.manifest_path.exists():
        return names
    for name in src.healthy():
        entry = src.get(name)
        try:
            check_same_base(entry, ref)
        except ZooError:
            continue
        if len(names) >= limit:
            break
        if name in dst.entries():  # a name the bench trained itself
            continue
        shutil.copytree(src.adapter_dir(name), dst.adapter_dir(name))
        dst.put(name, entry)
        names.append(name)
    return names


def make_random_adapters(zoo, loaded, count: int, seed: int = 0) -> list[str]:
    """`count` LoRA adapters of the built-in tasks' default shapes with random weights (B is non-zero, so
    they change outputs like trained ones), for when the zoo has too few real ones."""
    import torch
    from peft import get_peft_model

    from tasks import get_task
    from zoo.train import lora_config

    names = []
    for k, task in enumerate(ADAPTER_TASKS):
        spec = get_task(task)
        mine = [f"random-{task}-{i}" for i in range(k, count, len(ADAPTER_TASKS))]
        if not mine:
            continue
        with loaded.lock:
            model = get_peft_model(loaded.model, lora_config(spec.lora, loaded.model.config.num_hidden_layers))
            try:
                for i, name in enumerate(mine):
                    torch.manual_seed(seed + 1000 * k + i)
                    for n, p in model.named_parameters():
                        if "lora_B" in n:
                            p.data.normal_(0, 0.02)
                    model.save_pretrained(zoo.adapter_dir(name), safe_serialization=True)
                    zoo.put(name, {"name": name, "task": task, "kind": "random", "path": f"adapters/{name}",
                                   "base": {"id": loaded.ref.id, "hash": loaded.ref.hash, "quantized": loaded.quantized},
                                   "lora": asdict(spec.lora), "metrics": {}})
            finally:
                model.unload()
        names += mine
    return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))


# sections ------------------------------------------------------------------------------------
def bench_training(cfg: BenchConfig, work_zoo: Path, device: str, out: dict) -> None:
    """Each recipe on each task in its own fresh process: examples/s, tokens/s, peak memory. Fills `out` task
    by task, so the tasks already done survive a failure.

    The reference computes in fp32 on a CPU, as the recipe does. Where `zoo train` picks bf16 (a CPU with
    AVX512-BF16), part of the speedup is that choice; `reference_same_dtype` adds a reference run in our
    dtype, so the recipe's own share is on record too (`speedup_same_dtype`)."""
    from zoo.base import pick_compute_dtype
    from zoo.bench_reference import reference_dtype

    recipes = [("ours", "train-ours", False), ("reference", "train-reference", False)]
    if cfg.reference_same_dtype and reference_dtype(device) != pick_compute_dtype(device):
        recipes.append(("reference_same_dtype", "train-reference", True))
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
        out[task] = {**runs, "speedup": _ratio(runs["ours"], runs["reference"])}
        if "reference_same_dtype" in runs:
            out[task]["speedup_same_dtype"] = _ratio(runs["ours"], runs["reference_same_dtype"])


def _ratio(ours: dict, reference: dict) -> float:
    return round(ours["examples_per_s"] / reference["examples_per_s"], 2)


def score_trained(runtime, cfg: BenchConfig, training: dict) -> None:
    """The validation metric each trained adapter reaches, on the same seeded rows for both recipes."""
    from tasks import get_task
    from zoo.evaluation import eval_rows, run_outputs, score_outputs

    for task, result in training.items():
        spec = get_task(task)
        if cfg.gen_new_tokens:  # tiny runs: a short answer budget everywhere
            spec = replace(spec, max_new_tokens=cfg.gen_new_tokens)
        rows = eval_rows(spec, cfg.eval_n, cfg.data_dir)
        for recipe in ("ours", "reference"):
            progress(f"scoring {recipe}-{task} on {len(rows)} validation rows...")
            outputs, seconds = run_outputs(runtime, spec, rows, f"{recipe}-{task}", cfg.gen_batch)
            scores = score_outputs(spec, outputs, rows)
            result[recipe]["metric"] = {"name": spec.primary_metric, "value": scores[spec.primary_metric],
                                        "all": scores, "n": len(rows)}


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
    return next((n for n in names if entries.get(n, {}).get("task") == task
                 and entries[n].get("kind") != "random"), NONE)


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


# the whole run -------------------------------------------------------------------------------
def prepare_adapters(work, user_zoo, loaded, total: int) -> dict:
    """Adapters for the inference and memory sections: the user's, then those trained here, then random."""
    trained = sorted(work.entries(), key=lambda n: (not n.startswith("ours-"), n))
    from_zoo = copy_zoo_adapters(user_zoo, work, loaded.ref, max(0, total - len(trained)))
    random_ = make_random_adapters(work, loaded, max(0, total - len(trained) - len(from_zoo)))
    return {"from_zoo": from_zoo, "trained_here": trained, "random": random_,
            "order": from_zoo + trained + random_}


@contextlib.contextmanager
def section(result: dict, name: str):
    """Time a section; a failure is recorded and the other sections still run (a run can take an hour)."""
    t0 = time.perf_counter()
    try:
        yield
    except Exception as e:  # noqa: BLE001 - reported in the result and on stderr, never swallowed silently
        import traceback

        progress(f"section {name} failed:\n{traceback.format_exc()}")
        result.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
    finally:
        result["section_seconds"][name] = round(time.perf_counter() - t0, 1)


def run_bench(cfg: BenchConfig, user_zoo=None) -> dict:
    """Every section in one run on one base; returns the whole result (the bars included)."""
    from zoo.base import load_base, pick_device
    from zoo.serving.runtime import Runtime
    from zoo.store import Zoo

    from tasks import get_task

    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        raise ZooError(f"unknown bench section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    for task in cfg.tasks:
        get_task(task)  # an unknown task fails now, not after an hour
    start, device, want = time.perf_counter(), cfg.device or pick_device(), set(cfg.sections)
    result: dict = {"mode": cfg.mode, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "machine": machine_info(device), "config": asdict(cfg), "section_seconds": {}}
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        work = Zoo(Path(tmp) / "zoo")
        if "train" in want:
            result["train"] = {}
            with section(result, "train"):
                bench_training(cfg, work.root, device, result["train"])
        total = cfg.adapters_total if want & {"inference", "memory"} else 0  # scoring needs only the trained
        adapters = prepare_adapters(work, user_zoo, load_base(cfg.base, device=device), total)
        result["adapters"] = {k: v for k, v in adapters.items() if k != "order"}
        runtime = Runtime(work, base=cfg.base, device=device)
        try:
            if result.get("train"):
                with section(result, "train_scoring"):
                    score_trained(runtime, cfg, result["train"])
            if "inference" in want:
                with section(result, "inference"):
                    result["inference"] = bench_inference(runtime, cfg, adapters["order"])
        finally:
            runtime.close()
        if "memory" in want:
            with section(result, "memory"):
                result["memory"] = bench_memory(cfg, work.root, adapters["order"], device)
        if "router" in want:
            with section(result, "router"):
                result["router"] = bench_router(cfg, user_zoo, work)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result.update(headline(result))
    result["bars"] = bars(result)
    return result


def headline(result: dict) -> dict:
    """The four ratios the bars are about, at the top level of the result."""
    inf, mem = result.get("inference", {}), result.get("memory", {})
    return {"train_speedup": {t: r["speedup"] for t, r in result.get("train", {}).items()},
            "batched_eval_speedup": inf.get("batched_eval_speedup"),
            "mixed_batch_ratio": inf.get("mixed_batch_ratio"), "rss_10_over_1": mem.get("rss_10_over_1")}


def bars(result: dict) -> list[dict]:
    """PASS/FAIL per bar; a bar whose section did not run is left out."""
    out = []
    for task, t in result.get("train", {}).items():
        ours, ref = t["ours"].get("metric"), t["reference"].get("metric")
        scores = f", {ours['value']:.3g} vs {ref['value']:.3g}" if ours and ref else ", not scored"
        out.append({"bar": f"train {task}: >= 2x reference examples/s, {(ours or {}).get('name', 'metric')} "
                           ">= reference", "value": f"{t['speedup']}x{scores}",
                    "pass": t["speedup"] >= 2 and bool(ours and ref) and ours["value"] >= ref["value"]})
    checks = [("batched eval >= 3x tokens/s of one at a time", "batched_eval_speedup", lambda v: v >= 3, "x"),
              ("mixed batch >= 0.8x single-adapter throughput", "mixed_batch_ratio", lambda v: v >= 0.8, "x"),
              ("10 adapters add < 15% RSS over 1", "rss_10_over_1", lambda v: v < 1.15, "x")]
    for text, key, ok, unit in checks:
        if result.get(key) is not None:
            out.append({"bar": text, "value": f"{result[key]}{unit}", "pass": bool(ok(result[key]))})
    for name, error in result.get("errors", {}).items():
        out.append({"bar": f"section {name} ran", "value": error, "pass": False})
    if result["mode"] == "quick":
        out.append({"bar": "--quick < 10 minutes", "value": f"{result['seconds']:.0f} s",
                    "pass": result["seconds"] < 600})
    return out


if __name__ == "__main__":  # a bench worker: python -m zoo.bench JOB.json OUT.json
    sys.exit(worker_main(sys.argv[1:]))
