"""What `zoo train --ray` and `zoo eval --ray` share: joining (or starting) a Ray cluster, one Ray task per job
with the resources and retries asked for, progress lines from every worker, each result handled as it arrives,
failures reported by name while the others finish, and Ctrl-C cancelling whatever still runs.

Ray retries what it can retry (`max_retries`): a crashed or killed worker, a lost node and, with
`retry_exceptions`, any exception. A `ZooError` (bad data, a bad setting) is returned as a value instead of
raised, since it would fail the same way again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ZooError

INSTALL = "pip install 'adapter-zoo[ray]'"
ADDRESS_ENV = "ZOO_RAY_ADDRESS"
# what workers on other machines need to find data and caches as this process does (never a token)
FORWARDED_ENV = ("ZOO_DATA_DIR", "ZOO_CACHE", "ZOO_DTYPE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT")


@dataclass
class RayOptions:
    address: str | None = None  # None or "local": start a local cluster; "auto": the running one; else HOST:PORT
    cpus: float | None = None  # per task; default 1
    gpus: float | None = None  # per task; default 1 when the cluster has GPUs, else 0
    retries: int = 2  # Ray's max_retries per task


def add_ray_flags(p: argparse.ArgumentParser, what: str) -> None:
    from zoo.cli import count

    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help=f"{what} in a Ray task of its own, on the cluster at ADDRESS ('auto': the running one; "
                        f"without ADDRESS: ${ADDRESS_ENV}, else a new local cluster); needs {INSTALL}")
    p.add_argument("--ray-cpus", type=positive, default=None, metavar="X", help="CPUs per Ray task (default 1)")
    p.add_argument("--ray-gpus", type=float, default=None, metavar="X",
                   help="GPUs per Ray task (default 1 when the cluster has GPUs, else 0)")
    p.add_argument("--ray-retries", type=count(0, 100), default=2, metavar="N",
                   help="retries of a failed Ray task: crashed worker, lost node, exception (default 2)")


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"takes a positive number, not {text[:40]!r}")
    return value


def options_from(args) -> RayOptions:
    address = args.ray or os.environ.get(ADDRESS_ENV) or None
    if args.ray_gpus is not None and not 0 <= args.ray_gpus < 1e6:
        raise ZooError(f"--ray-gpus takes 0 or a positive number, not {args.ray_gpus}")
    return RayOptions(address, args.ray_cpus, args.ray_gpus, args.ray_retries)


def require_ray():
    try:
        import ray
    except ImportError:
        raise ZooError(f"--ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


def runtime_env(address: str | None) -> dict:
    """The environment variables above, and for a cluster we join, this checkout's code (`zoo`, `tasks`,
    `router`), so every worker runs what the driver runs; the cluster provides the dependencies."""
    env = {"env_vars": {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}}
    if address:
        root = Path(__file__).resolve().parents[2]
        env["py_modules"] = [str(root / pkg) for pkg in ("zoo", "tasks", "router")]
    return env


@contextlib.contextmanager
def connected(options: RayOptions):
    """Ray, joined to `options.address` (or to the cluster this process already joined), or to a new local
    cluster; leaves afterwards only a connection made here."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = None if options.address in (None, "", "local") else options.address  # `--ray local`: a new one
    kwargs = {"log_to_driver": False, "runtime_env": runtime_env(address)}
    if address is None:
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address or "local", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ZooError(f"could not join the Ray cluster at {options.address!r} ({_first_line(e)}); start one with "
                       "`ray start --head` (a cluster with token authentication also needs RAY_AUTH_MODE=token and "
                       "its token here), or drop the address to start a local one") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def task_options(ray, options: RayOptions) -> dict:
    """Resources per task (one GPU each when the cluster has GPUs), and Ray's retries."""
    have = ray.cluster_resources()
    gpus = options.gpus if options.gpus is not None else (1.0 if have.get("GPU", 0) >= 1 else 0.0)
    cpus = options.cpus or 1.0
    for kind, want in (("CPU", cpus), ("GPU", gpus)):
        if want > have.get(kind, 0):
            print(f"[ray] warning: each task asks for {want:g} {kind} but the cluster has {have.get(kind, 0):g} now; "
                  "tasks wait until an autoscaler adds nodes", file=sys.stderr)
    return {"num_cpus": cpus, "num_gpus": gpus, "max_retries": options.retries, "retry_exceptions": True}


def run_jobs(ray, fn, jobs: dict[str, dict], options: RayOptions, land, on_event=None) -> dict[str, str]:
    """One Ray task `fn(job, progress)` per job; `land(name, result)` for each result as it arrives.
    Returns the failures, {name: error}. Ctrl-C cancels the tasks still running and re-raises."""
    from ray.util.queue import Queue

    progress, submitted = Queue(actor_options={"num_cpus": 0}), time.perf_counter()
    task, opts = ray.remote(fn), task_options(ray, options)
    refs = {task.options(name=f"zoo:{name}", **opts).remote(job, progress): name for name, job in jobs.items()}
    failed, on_event = {}, on_event or print_event
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            _drain(progress, on_event)
            for ref in ready:
                name = refs.pop(ref)
                error, worker_s = _collect(ray, ref, name, land)
                if error:
                    failed[name] = error
                    print(f"[ray] {name}: FAILED: {error}", file=sys.stderr, flush=True)
                else:
                    print(f"[ray] {name}: done, {worker_s:.1f} s on the worker, {time.perf_counter() - submitted:.1f} "
                          "s after submission", flush=True)
        _drain(progress, on_event)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref, force=True)
        print(f"[ray] interrupted: cancelled {', '.join(sorted(refs.values())) or 'nothing'}; what finished "
              "before stays", file=sys.stderr, flush=True)
        raise
    finally:
        ray.kill(progress.actor)
    return failed


def _collect(ray, ref, name: str, land) -> tuple[str | None, float]:
    """Land one finished task's result: (None, seconds the worker took), or (the error as one line, 0)."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the task raised, on every attempt
        cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
        return f"{type(cause).__name__}: {_first_line(cause)}", 0.0
    except ray.exceptions.RayError as e:  # worker killed, node lost, cancelled: after Ray's retries
        return f"{type(e).__name__}: {_first_line(e)}", 0.0
    if not isinstance(result, dict) or "error" in result:
        return str(result.get("error") if isinstance(result, dict) else "the task returned no result")[:500], 0.0
    try:
        land(name, result)
    except ZooError as e:
        return str(e), 0.0
    seconds = result.get("seconds")
    return None, float(seconds) if isinstance(seconds, (int, float)) else 0.0


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


# progress: workers put (name, event) on a queue actor; the driver prints one line per event -------------------
def report(progress, name: str, event: str, **data) -> None:
    """From a worker: one progress event, sent without waiting. `Queue.put_nowait` would wait for the queue's
    answer, and a task blocked in `ray.get` lends its CPU to the next task: more tasks would run than CPUs."""
    actor = getattr(progress, "actor", None)
    if actor is None:
        return
    try:
        actor.put_nowait.remote((name, {"event": event, "at": time.time(), **data}))  # in order, per task
    except Exception:  # noqa: BLE001 - progress is a courtesy (the queue is gone after a Ctrl-C): work goes on
        pass


def _drain(progress, on_event) -> None:
    while not progress.empty():
        try:
            name, event = progress.get_nowait()
        except Exception:  # noqa: BLE001 - emptied meanwhile
            return
        on_event(name, event)


def print_event(name: str, event: dict) -> None:
    kind = event.get("event")
    if kind == "started":
        line = f"started on {event.get('host')} (pid {event.get('pid')})"
    elif kind == "step":
        line = f"step {event.get('step')}/{event.get('of')}, loss {event.get('loss', float('nan')):.4f}"
    elif kind == "finished":
        return  # the driver's "done" line says it, once the result is checked and installed
    else:
        line = str(kind)
    print(f"[ray] {name}: {line}", flush=True)
