"""Measured jobs, each in a fresh Python process so that peak memory never mixes between them.

Protocol: `run_worker(job)` writes `job` (a JSON dict whose `kind` names a function of `WORKERS`) to a file,
runs `python -m zoo.bench JOB.json OUT.json` (`zoo/bench/__main__.py` -> `main`), and reads the worker's result
(plus its pid) back from OUT.json. A failing worker is a `ZooError` carrying the tail of its output.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from zoo.bench.config import MB
from zoo.bench.measure import dtype_name, gpu_memory, rss_bytes, rss_mb, step_timer, touch
from zoo.errors import ZooError

BARE_IMPORTS = "torch, transformers, bitsandbytes"  # the libraries either base needs, loaded before measuring


def run_worker(job: dict, isolate: bool = True) -> dict:
    """Run `job` in a fresh Python process; its output stays off our stdout. `isolate=False` runs it here
    instead (tests: seconds instead of a torch import per job)."""
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


def main(argv: list[str]) -> int:
    """The worker process: `python -m zoo.bench JOB.json OUT.json`."""
    job = json.loads(Path(argv[0]).read_text())
    result = WORKERS[job["kind"]](job)
    Path(argv[1]).write_text(json.dumps({**result, "pid": os.getpid()}))
    return 0


# training ------------------------------------------------------------------------------------
def bench_spec(task: str, examples: int, max_memory: str | None = None):
    """The task named on the command line, trained on `examples` rows by both recipes (ours within `max_memory`
    when given)."""
    from tasks import get_task

    return get_task(task).with_overrides(train={"max_examples": examples, "max_memory": max_memory})


def train_result(task: str, recipe: str, stats: dict, lora: dict, device: str, marks: list[float]) -> dict:
    """Throughput over the whole `trainer.train()` (what a user waits for), plus the step times: the first
    step carries one-off warm-up, and after the last comes saving (ours checkpoints, the reference does not).
    `stats` holds seconds, examples, tokens, load_seconds and final_loss."""
    seconds = max(marks[-1] - marks[0] if len(marks) > 1 else stats["seconds"], 1e-3)
    steps = [round(b - a, 2) for a, b in zip(marks, marks[1:-1])]
    examples, tokens = stats["examples"], stats["tokens"]
    per_step = examples / max(1, len(steps))
    steady = per_step * (len(steps) - 1) / max(sum(steps[1:]), 1e-3) if len(steps) > 1 else None
    return {"task": task, "recipe": recipe, "examples": examples, "tokens": tokens,
            "train_seconds": round(seconds, 2), "load_seconds": round(stats["load_seconds"], 2),
            "examples_per_s": round(examples / seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "step_seconds": steps, "after_last_step_seconds": round(marks[-1] - marks[-2], 2) if steps else None,
            "steady_examples_per_s": round(steady, 3) if steady else None,
            "peak_rss_mb": rss_mb("VmHWM"), "gpu": gpu_memory(device), "lora": lora,
            "final_loss": stats["final_loss"]}


def worker_train_ours(job: dict) -> dict:
    """`zoo train`'s own `train_adapter`, timed by the step timer."""
    from zoo.base import load_base
    from zoo.store import Zoo
    from zoo.train import train_adapter

    spec = bench_spec(job["task"], job["examples"], job.get("max_memory"))
    t0 = time.perf_counter()
    loaded = load_base(job["base"], quant=True, device=job["device"])
    load_s = time.perf_counter() - t0
    timer = step_timer()
    entry = train_adapter(Zoo(job["zoo"]), spec, loaded, name=job["name"], data_dir=job["data_dir"],
                          callbacks=[timer])
    lora = {**asdict(spec.lora), "target_modules": spec.lora.module_names(),
            "layers": spec.lora.layers or "all", "gradient_checkpointing": spec.train.gradient_checkpointing,
            "loss_on": "answer tokens", "batching": "packed", "compute_dtype": dtype_name(loaded.compute_dtype),
            "memory_plan": entry.throughput.get("memory")}
    stats = {"seconds": entry.throughput["seconds"], "examples": entry.data["examples"],
             "tokens": entry.data["tokens"], "load_seconds": load_s, "final_loss": entry.final_loss}
    return train_result(job["task"], "ours", stats, lora, loaded.device, timer.marks)


def worker_train_reference(job: dict) -> dict:
    """The textbook recipe (`zoo.bench.reference`) on the same rows; its adapter enters the work zoo."""
    from zoo.bench.adapters import install_reference
    from zoo.bench.reference import train_reference
    from zoo.base import resolve_base
    from zoo.data import load_rows
    from zoo.store import Zoo

    spec = bench_spec(job["task"], job["examples"])
    rows = load_rows(spec, spec.train_split, job["data_dir"], limit=spec.train.max_examples, seed=spec.train.seed)
    zoo, ref = Zoo(job["zoo"]), resolve_base(job["base"])
    staged, timer = zoo.staging_dir(job["name"]), step_timer()
    r = train_reference(spec, ref.path, rows, staged, job["device"], callbacks=[timer],
                        match_dtype=job.get("match_dtype", False))
    install_reference(zoo, staged, job["name"], spec, ref, r["lora"])
    return train_result(job["task"], "reference", r, r["lora"], job["device"], timer.marks)


# memory --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _env(key: str, value: str):
    """`key=value` in the environment for the block, then as it was."""
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _bare_imports() -> int:
    """Import what either base needs, then the RSS: the floor both bases are measured over."""
    import bitsandbytes  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    return rss_bytes()


def worker_base_rss(job: dict) -> dict:
    """RSS after a bare import of the libraries, then after loading the base (NF4 or fp32) and using it."""
    from zoo.base import load_base

    bare = _bare_imports()
    with _env("ZOO_DTYPE", job.get("dtype") or os.environ.get("ZOO_DTYPE") or "auto"):
        loaded = load_base(job["base"], quant=job["quant"], device=job["device"])
    touch(loaded.model)
    return {"bare_imports": BARE_IMPORTS, "bare_mb": round(bare / MB, 1), "loaded_mb": rss_mb(),
            "base_mb": round((rss_bytes() - bare) / MB, 1), "quantized": loaded.quantized,
            "dtype": dtype_name(loaded.compute_dtype), "gpu": gpu_memory(loaded.device)}


def adapter_sizes(runtime, name: str) -> dict:
    """Bytes on disk, parameter count and bytes in memory of one loaded adapter (its lora_A/lora_B tensors)."""
    params = runtime.adapter_parameters(name)
    return {"name": name, "disk_bytes": (runtime.zoo.adapter_dir(name) / "adapter_model.safetensors").stat().st_size,
            "params": sum(p.numel() for p in params),
            "param_bytes": sum(p.numel() * p.element_size() for p in params)}


def worker_runtime_rss(job: dict) -> dict:
    """RSS of one runtime as adapters are added: bare imports, base loaded and used, then 1, 3, ... adapters."""
    bare = _bare_imports()
    from zoo.serving.runtime import Runtime  # after the bare measure, as in worker_base_rss

    rt = Runtime(job["zoo"], base=job["base"], device=job["device"])
    touch(rt.loaded.model)
    rt.release_memory()
    steps = {"base": rss_mb()}
    for count in job["counts"]:
        for name in job["names"][:count]:
            rt.load_adapter(name)
        rt.release_memory()
        steps[str(count)] = rss_mb()
    sizes = [adapter_sizes(rt, n) for n in job["names"]]
    gpu = gpu_memory(rt.loaded.device)
    rt.close()
    return {"bare_mb": round(bare / MB, 1), "rss_mb": steps, "adapters": sizes, "gpu": gpu,
            "dense_weight_mb": round(rt.dense_weight_bytes / MB, 1)}  # in every step above (zoo.serving.dense)


WORKERS = {"train-ours": worker_train_ours, "train-reference": worker_train_reference,
           "base-rss": worker_base_rss, "runtime-rss": worker_runtime_rss}
