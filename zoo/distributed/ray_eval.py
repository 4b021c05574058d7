"""`zoo eval --ray`: every adapter is evaluated in its own Ray task, exactly as `zoo eval` evaluates it here.

The driver sends each adapter's files, entry and task spec; a worker rebuilds a one-adapter scratch zoo through
`Zoo.install`, runs `zoo.evaluation.evaluate` with a `Runtime` on it, and sends the result back. The driver
writes the reports and the manifest metrics as each result arrives, as the local command does.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time

from zoo.distributed.ray_jobs import RayOptions, connected, report, run_jobs
from zoo.distributed.ray_train import write_files
from zoo.errors import ZooError


def eval_on_ray(zoo, names: list[str], n: int, seed: int, data_dir, batch_size: int, options: RayOptions,
                quant: bool = True, on_event=None, ood_n: int | None = None) -> tuple[list[dict], dict[str, str]]:
    """Evaluate `names` on Ray; reports and metrics land in `zoo`. Returns (summaries, failures)."""
    from tasks import spec_for_adapter

    data_dir = str(data_dir or os.environ.get("ZOO_DATA_DIR") or "") or None
    jobs = {}
    for name in names:
        zoo.require_healthy(name)  # a damaged adapter is refused here, before any cluster time
        folder = zoo.adapter_dir(name)
        jobs[name] = {"name": name, "entry": zoo.get(name).to_json(), "spec": spec_for_adapter(zoo, name).to_json(),
                      "files": {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()},
                      "n": n, "ood_n": ood_n, "seed": seed, "data_dir": data_dir, "batch_size": batch_size,
                      "quant": quant, "cpus": options.cpus or 1}
    results = []

    def land(name: str, result: dict) -> None:
        results.append(record(zoo, name, result.get("result")))

    with connected(options) as ray:
        failed = run_jobs(ray, eval_task, jobs, options, land, on_event)
    return results, failed


def record(zoo, name: str, result) -> dict:
    """The report files and the manifest metrics of one returned result, as `zoo eval` writes them."""
    from zoo.evaluation import summary
    from zoo.reports import read_loss_log, write_task_report

    if not isinstance(result, dict) or result.get("name") != name or not isinstance(result.get("metric"), str):
        raise ZooError(f"the Ray task for {name!r} sent back no evaluation result")
    write_task_report(zoo.reports_dir, result, read_loss_log(zoo.adapter_dir(name)))
    zoo.set_metrics(name, "eval", summary(result))
    return summary(result)


def eval_task(job: dict, progress=None) -> dict:
    """One Ray task: the adapter in a scratch zoo of its own, evaluated with the local code."""
    import torch

    from tasks import TaskSpec
    from zoo.evaluation import evaluate
    from zoo.manifest import Entry
    from zoo.serving.runtime import Runtime
    from zoo.store import Zoo

    name, started = job["name"], time.perf_counter()
    torch.set_num_threads(max(1, int(job["cpus"])))
    report(progress, name, "started", host=socket.gethostname(), pid=os.getpid())
    with tempfile.TemporaryDirectory(prefix="zoo-ray-eval-") as scratch:
        try:
            zoo = Zoo(scratch)
            staged = zoo.staging_dir(name)
            staged.mkdir(parents=True)
            write_files(staged, job["files"], name)
            zoo.install(staged, Entry.from_json(job["entry"]))
            spec = TaskSpec.from_json(job["spec"], where=f"adapter {name!r}'s task")
            with Runtime(zoo, quant=job["quant"]) as runtime:
                result = evaluate(runtime, name, spec, n=job["n"], data_dir=job["data_dir"], seed=job["seed"],
                                  batch_size=job["batch_size"], ood_n=job.get("ood_n"))
        except ZooError as e:  # the same input fails the same way again: no retry
            return {"error": str(e)}
    seconds = time.perf_counter() - started
    report(progress, name, "finished", seconds=seconds)
    return {"result": result, "seconds": seconds}
