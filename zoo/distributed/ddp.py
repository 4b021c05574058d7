"""One adapter trained data-parallel by several processes: `accelerate launch -m zoo train TASK ...` or
`zoo train --processes N TASK ...` (which runs that launch for you).

transformers' Trainer does the data-parallel part: under a distributed launch it gives each process its own
shard of the batches (each process packs its own rows) and DDP averages the gradients (gloo on CPUs, NCCL on
GPUs). This module keeps the zoo's side right:
- one process, the main one, holds the name lock, prepares the run folder, writes checkpoints (the Trainer
  already saves on the main process only), the adapter and the manifest entry; the others wait for it and share
  its result, or its error, so a refusal ends every process with the same line instead of a hang;
- the effective batch stays what one process with the same settings would use (`per_process_args`), so a
  task's settings mean the same thing on 1 or N devices;
- the answer-only loss runs inside DDP's forward (`loss_through`), where DDP arms its gradient averaging.
With one process every function here is a plain call: the local path is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from zoo.errors import ZooError


def world_size() -> int:
    """Processes in this launch (torchrun / accelerate set WORLD_SIZE); 1 when run plainly."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main() -> bool:
    return os.environ.get("RANK", "0") in ("0", "")


def device() -> str | None:
    """This process's own GPU under a launch on GPUs (each process one device); None: the usual pick."""
    if world_size() == 1:
        return None
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else None


def _state():
    """accelerate's process state: joins the launch's process group once (the Trainer's is the same object).
    On CPUs it must say so (`cpu=True`), or accelerate sees no distributed setup and each process trains alone."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def leave() -> None:
    """Leave the launch's process group before the interpreter exits. Without it gloo's worker threads can
    outlive the interpreter's teardown and abort a finished run ("terminate called without an active
    exception", exit -6; pytorch/pytorch#190489), which the launcher reports as a failure."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def on_main(fn, *args):
    """`fn(*args)` on the main process only; every process returns its result (or raises its ZooError)."""
    if world_size() == 1:
        return fn(*args)
    import torch.distributed as dist

    _state()
    box = [None]
    error = None
    if is_main():
        try:
            box = [("ok", fn(*args))]
        except Exception as e:  # the others must hear of it, or they wait for the main process forever
            box, error = [("error", str(e) or type(e).__name__)], e
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise ZooError(f"the main process stopped: {value}")
    return value


@contextlib.contextmanager
def main_holds(context):
    """Enter `context` (a lock) on the main process only, for the duration of the block."""
    with contextlib.ExitStack() as stack:
        on_main(lambda: stack.enter_context(context) and None)
        yield


def per_process_args(args: dict) -> dict:
    """Trainer arguments for one of N processes, with the effective batch (batch size x accumulation x
    processes) equal to one process's batch size x accumulation: accumulation is divided by N when it can
    be, else the batch size. Unchanged for one process."""
    n = world_size()
    if n == 1:
        return args
    batch, accum = args["per_device_train_batch_size"], args["gradient_accumulation_steps"]
    if accum % n == 0:
        accum //= n
    elif batch % n == 0:
        batch //= n
    else:
        raise ZooError(f"{n} processes cannot share a batch of {batch} x {accum} accumulation steps evenly; make "
                       f"--grad-accum or --batch-size a multiple of {n}")
    return {**args, "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum,
            "ddp_find_unused_parameters": False}  # every LoRA weight takes part in every step


def loss_through(model, inputs: dict, loss_fn):
    """`loss_fn(model, inputs)`, run as DDP's forward when `model` is DDP-wrapped: DDP averages gradients only
    for a forward it ran itself, and our loss calls the decoder and the LM head directly (answer positions only)."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return loss_fn(model, inputs)
    inner = model.module
    saved = inner.__dict__.get("forward")  # accelerate may have put its own wrapper there
    inner.forward = lambda **kw: loss_fn(inner, kw)
    try:
        return model(**inputs)
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved


def total(*counts: int) -> tuple[int, ...]:
    """Counts summed over every process (examples and tokens each process saw), for honest throughput."""
    if world_size() == 1:
        return counts
    import torch
    import torch.distributed as dist

    t = torch.tensor(counts, dtype=torch.float64, device=_state().device)
    dist.all_reduce(t)
    return tuple(int(v) for v in t.tolist())


# `zoo train --processes N`: the same command under `accelerate launch` -----------------------------------------
def launch_command(processes: int, argv: list[str]) -> list[str]:
    """`accelerate launch` of `python -m zoo <argv>` in `processes` processes. Its torchrun launcher
    (`--multi_gpu`) is the one that starts several processes on CPUs too (`--cpu` starts one, unless MPI is
    set up); the processes themselves pick gloo on CPUs and NCCL on GPUs."""
    import torch

    mode = ["--multi_gpu"] if processes > 1 else []
    if not torch.cuda.is_available():  # share the cores instead of torchrun's one thread per process
        mode += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // processes))]
    return [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "zoo", *argv]


def without_processes(argv: list[str]) -> list[str]:
    """The command line minus `--processes N` (the launched processes must not launch again)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--processes":
            skip = True
        elif not a.startswith("--processes="):
            out.append(a)
    return out


def relaunch(processes: int) -> int:
    """Run this `zoo train` command again in `processes` data-parallel processes; their exit code is ours."""
    if world_size() > 1:
        raise ZooError("--processes inside a distributed launch: drop it (this process is already one of "
                       f"{world_size()})")
    argv = without_processes(sys.argv[1:])
    if "train" not in argv:
        raise ZooError("--processes relaunches `zoo train ...` from the command line; use `accelerate launch -m zoo "
                       "train ...` from Python code")
    print(f"[zoo] launching {processes} data-parallel processes (accelerate launch)", flush=True)
    return subprocess.call(launch_command(processes, argv))
