"""`zoo train --ray`: every task trains in its own Ray task, exactly as `zoo train` trains it here.

A worker runs the local recipe (`zoo.train.train_adapter`: same seed, same settings, same packed rows) into a
scratch zoo of its own and sends back the finished adapter's files. The driver trusts them no more than a pulled
adapter (`zoo.hub.pull`): plain safe files only, the entry type-checked field by field, the task spec the one it
sent, the base fingerprint the driver's own base, the tensors plain LoRA shaped for that base. Each adapter then
enters the zoo through `Zoo.install` as it arrives (one manifest write each); one that fails is reported by name
and the others still land. The driver holds each adapter name's lock meanwhile, as local training does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from zoo.distributed.ray_jobs import RayOptions, connected, report, run_jobs
from zoo.errors import ZooError

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_ADAPTER_BYTES = 8 << 30  # a LoRA adapter is megabytes; gigabytes more is no adapter


def train_on_ray(zoo, specs: list, names: list[str], base: str, quant: bool, data_dir,
                 options: RayOptions, on_event=None) -> tuple[list, dict[str, str]]:
    """Train `specs` (adapter `names`) on Ray and install each into `zoo`. Returns (entries, failures)."""
    from zoo.hub.pull import Bases

    if len(set(names)) != len(names):
        raise ZooError("each adapter name once: the same task twice would train the same adapter twice")
    bases = Bases([base])
    bases.resolve(base)  # a base that is not here cannot check what comes back: refuse before any work
    data_dir = str(data_dir or os.environ.get("ZOO_DATA_DIR") or "") or None
    jobs = {name: {"name": name, "spec": spec.to_json(), "base": base, "quant": quant, "data_dir": data_dir,
                   "cpus": options.cpus or 1} for name, spec in zip(names, specs)}
    landed = []

    def land(name: str, result: dict) -> None:
        landed.append(install_result(zoo, name, result, jobs[name]["spec"], bases))

    with contextlib.ExitStack() as locks:
        for name in names:
            locks.enter_context(zoo.name_lock(name))
        with connected(options) as ray:
            failed = run_jobs(ray, train_task, jobs, options, land, on_event)
    return landed, failed


# the worker ------------------------------------------------------------------------------------------------------
def train_task(job: dict, progress=None) -> dict:
    """One Ray task: train one adapter with the local recipe in a scratch zoo; its files and entry come back."""
    import torch

    from tasks import TaskSpec
    from zoo.base import load_base
    from zoo.store import Zoo
    from zoo.train import train_adapter

    name, started = job["name"], time.perf_counter()
    torch.set_num_threads(max(1, int(job["cpus"])))  # the CPUs Ray gave this task, not the whole node's
    report(progress, name, "started", host=socket.gethostname(), pid=os.getpid())
    with tempfile.TemporaryDirectory(prefix="zoo-ray-") as scratch:
        try:
            spec = TaskSpec.from_json(job["spec"], where=f"task {name!r}")
            loaded = load_base(job["base"], quant=job["quant"])
            entry = train_adapter(Zoo(scratch), spec, loaded, name=name, data_dir=job["data_dir"],
                                  callbacks=[progress_callback(progress, name)])
        except ZooError as e:  # bad data or settings fail the same way on every attempt: no retry
            return {"error": str(e)}
        folder = Zoo(scratch).adapter_dir(name)
        files = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    seconds = time.perf_counter() - started
    report(progress, name, "finished", seconds=seconds)
    return {"entry": entry.to_json(), "files": files, "seconds": seconds}


def progress_callback(progress, name: str):
    """A Trainer callback that sends each logged loss to the driver."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                report(progress, name, "step", step=state.global_step, of=state.max_steps, loss=logs["loss"])

    return Progress()


# the driver: check what came back as a pulled adapter, then install it ------------------------------------------
def install_result(zoo, name: str, result: dict, sent_spec: dict, bases):
    """Write the returned files to staging, check them, install them: the manifest entry that was recorded."""
    staged = zoo.staging_dir(name)
    staged.mkdir(parents=True)
    try:
        write_files(staged, result.get("files"), name)
        entry = checked_entry(staged, name, result.get("entry"), sent_spec, bases)
        zoo.install(staged, entry)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return entry


def write_files(folder: Path, files, name: str) -> None:
    """Plain file names and bytes only: nothing that could land outside `folder`."""
    if not isinstance(files, dict) or not files:
        raise ZooError(f"the Ray task for {name!r} sent back no adapter files")
    bad = [str(f)[:80] for f, data in files.items()
           if not (isinstance(f, str) and _FILE_NAME.fullmatch(f) and isinstance(data, bytes))]
    if bad:
        raise ZooError(f"the Ray task for {name!r} sent back unusable files ({', '.join(bad)}); nothing was added")
    if sum(len(d) for d in files.values()) > MAX_ADAPTER_BYTES:
        raise ZooError(f"the Ray task for {name!r} sent back more than {MAX_ADAPTER_BYTES >> 30} GiB; no adapter")
    for fname, data in files.items():
        (folder / fname).write_bytes(data)


def checked_entry(folder: Path, name: str, raw, sent_spec: dict, bases):
    """The checks `zoo pull` makes (safe files, typed entry, base fingerprint, plain LoRA that fits the base),
    and the task spec must be the one sent."""
    from tasks import SPEC_FILE
    from zoo.hub.pull import check_safe_folder, pulled_entry
    from zoo.manifest import BaseInfo
    from zoo.store import adapter_problems

    what = f"adapter {name!r} trained on Ray"
    check_safe_folder(folder, what)
    if not isinstance(raw, dict):
        raise ZooError(f"{what}: no manifest entry came back; nothing was added")
    entry = pulled_entry(raw, name, "ray", what)
    try:
        spec = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        spec = None
    if entry.kind != "trained" or spec != json.loads(json.dumps(sent_spec)) or entry.task != sent_spec["name"]:
        raise ZooError(f"{what}: its task or {SPEC_FILE} is not the task that was sent; nothing was added")
    ref = bases.match(entry.base, what)
    problems = adapter_problems(name, folder, bases.dims(ref))
    if problems:
        raise ZooError(f"{what}: {problems[0].what}; nothing was added")
    return entry.with_(base=BaseInfo(ref.id, entry.base.hash, entry.base.quantized), pulled_from=None)
