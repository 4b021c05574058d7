"""What the bench measures with: resident memory, GPU memory, the machine, step times, progress lines."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from zoo.bench.config import MB


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


def rss_mb(field: str = "VmRSS") -> float:
    return round(rss_bytes(field) / MB, 1)


def gpu_memory(device: str | None) -> dict | None:
    """Allocated and peak GPU bytes on a CUDA device (None on CPU)."""
    if not device or not str(device).startswith("cuda"):
        return None
    import torch

    return {"allocated_mb": round(torch.cuda.memory_allocated() / MB, 1),
            "peak_mb": round(torch.cuda.max_memory_allocated() / MB, 1)}


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    """What a reader needs to compare two result files: CPU, cores, device, dtype, library versions."""
    import torch

    from zoo.base import pick_compute_dtype

    # torch_isa: the instruction set torch uses ("AVX2" where `ATEN_CPU_CAPABILITY=avx2` keeps an AVX512 CPU off
    # AVX512: the CPU name alone would then misstate what ran)
    info = {"cpu": _cpu_name(), "torch_isa": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "device": device,
            "compute_dtype": dtype_name(pick_compute_dtype(device)),
            "versions": {p: _version(p) for p in ("torch", "transformers", "peft", "bitsandbytes", "adapter-zoo")}}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def step_timer():
    """A Trainer callback that stamps the start, every optimizer step and the end of training: both recipes
    are timed by the same clock."""
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


def touch(model) -> None:
    """One short forward pass and a read of every weight: lazily mapped weights count once they are used."""
    import torch

    with torch.inference_mode():
        for t in [*model.parameters(), *model.buffers()]:
            t.sum()
        model(input_ids=torch.tensor([[1, 2, 3, 4]], device=model.device), use_cache=False)


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)
