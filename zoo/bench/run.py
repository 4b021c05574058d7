"""One whole bench run: check the request, make a work zoo, run the sections asked for, judge the bars."""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from zoo.bench import sections
from zoo.bench.adapters import prepare_adapters
from zoo.bench.bars import bars, headline
from zoo.bench.config import SECTIONS, BenchConfig
from zoo.bench.measure import machine_info, progress
from zoo.bench.engines import bench_vs_vllm
from zoo.bench.serve import bench_serve
from zoo.errors import ZooError


def check_config(cfg: BenchConfig) -> None:
    """Unknown sections or tasks fail now, not after an hour of training."""
    from tasks import get_task

    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        raise ZooError(f"unknown bench section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    for task in cfg.tasks:
        get_task(task)  # a task named on the command line: the registry (or a task file) knows it


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
    """Every section asked for, in one run on one base; returns the whole result (the bars included)."""
    from zoo.base import pick_device
    from zoo.store import Zoo

    check_config(cfg)
    start, device = time.perf_counter(), cfg.device or pick_device()
    result: dict = {"mode": cfg.mode, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "machine": machine_info(device), "config": asdict(cfg), "section_seconds": {}}
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        run_sections(cfg, user_zoo, Zoo(Path(tmp) / "zoo"), device, result)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result.update(headline(result))
    result["bars"] = bars(result)
    return result


def run_sections(cfg: BenchConfig, user_zoo, work, device: str, result: dict) -> None:
    """Training first (its adapters feed the rest), then what runs on one runtime, then memory and router."""
    from zoo.base import load_base

    want = set(cfg.sections)
    if "train" in want:
        result["train"] = {}
        with section(result, "train"):
            sections.bench_training(cfg, work.root, device, result["train"])
    total = cfg.adapters_total if want & {"inference", "memory"} else 3 if "serve" in want else 0
    adapters = prepare_adapters(work, user_zoo, load_base(cfg.base, device=device), total)
    result["adapters"] = {k: v for k, v in adapters.items() if k != "order"}
    if result.get("train") or "inference" in want:
        run_on_runtime(cfg, work, device, adapters["order"], result)
    if "memory" in want:
        with section(result, "memory"):
            result["memory"] = sections.bench_memory(cfg, work.root, adapters["order"], device)
    if "router" in want:
        with section(result, "router"):
            result["router"] = sections.bench_router(cfg, user_zoo, work)
    if "serve" in want:
        with section(result, "serve"):
            result["serve"] = bench_serve(serving_zoo(user_zoo, work), cfg.base, cfg.serve_clients,
                                          cfg.serve_max_tokens)
        with section(result, "serve_vs_vllm"):
            result["serve"]["vs_vllm"] = {"skipped": "vllm_clients is 0"} if not cfg.vllm_clients else \
                bench_vs_vllm(serving_zoo(user_zoo, work), cfg.base, cfg.data_dir, cfg.vllm_clients,
                              cfg.serve_max_tokens)


def serving_zoo(user_zoo, work):
    """The user's zoo when it has healthy adapters (served read-only, with its router), else the work zoo."""
    return user_zoo if user_zoo is not None and user_zoo.manifest_path.exists() and user_zoo.healthy() else work


def run_on_runtime(cfg: BenchConfig, work, device: str, adapters: list[str], result: dict) -> None:
    """Scoring the trained adapters and the inference section share one runtime on the work zoo."""
    from zoo.serving.runtime import Runtime

    runtime = Runtime(work, base=cfg.base, device=device)
    try:
        if result.get("train"):
            with section(result, "train_scoring"):
                sections.score_trained(runtime, cfg, result["train"])
        if "inference" in set(cfg.sections):
            with section(result, "inference"):
                result["inference"] = sections.bench_inference(runtime, cfg, adapters)
    finally:
        runtime.close()
