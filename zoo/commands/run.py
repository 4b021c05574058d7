"""`zoo run [TASK=BUDGET ...] --deadline 24m`: the whole job of `make run` (train each task to a time budget,
fit the router, evaluate) ending by a deadline on whatever machine it runs (`zoo.job` says how). Each step is its
own `zoo` process; the plan and the time of each step are printed and kept in `reports/run.json`."""

from __future__ import annotations

import argparse

from zoo.cli import count
from zoo.errors import ZooError

DEFAULT_BUDGETS = ("sentiment=2m", "qa=5m", "summarization=4m")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("budgets", nargs="*", default=list(DEFAULT_BUDGETS), metavar="TASK=BUDGET",
                   help="tasks (names or task files) and each one's training budget when time allows "
                        f"(default: {' '.join(DEFAULT_BUDGETS)})")
    p.add_argument("--deadline", default=None,
                   help="the whole job's time (e.g. 24m): training is shortened so that it ends by then, to half "
                        "each budget at most (default: none, every task trains for its budget)")
    p.add_argument("-n", "--n", type=count(1), default=200, help="evaluation examples per task (default 200)")
    p.add_argument("--ood-n", type=count(1), default=None,
                   help="out-of-domain evaluation examples (default: -n); with a deadline, down to half of them "
                        "where they would shorten training")
    p.add_argument("--max-memory", default=None, help="`zoo train --max-memory` for every task")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $ZOO_DATA_DIR, else the Hub)")


def run(args) -> int:
    from zoo.budget import parse_duration
    from zoo.fsutil import atomic_write_json
    from zoo.job import Job, run_job
    from zoo.store import Zoo
    from zoo.training.memory import parse_budget

    from tasks import get_task

    defaults = parse_budgets(args.budgets)  # bad input stops the job here, before it spends anything
    adapters = [get_task(task).name for task in defaults]
    deadline = checked("--deadline", parse_duration, args.deadline)
    checked("--max-memory", parse_budget, args.max_memory)
    shared = ["--data-dir", args.data_dir] if args.data_dir else []
    train_args = ["--max-examples", "all", *(["--max-memory", args.max_memory] if args.max_memory else []), *shared]
    eval_args = ["-n", args.n, *shared]
    zoo = Zoo(args.zoo)
    summary = run_job(Job(defaults, deadline, ood_n=args.ood_n or args.n), train_args, eval_args, adapters,
                      route_args=shared)
    summary["examples"] = examples_trained(zoo, adapters)
    atomic_write_json(zoo.reports_dir / "run.json", summary)
    print(f"[zoo] the job's steps and times: {zoo.reports_dir / 'run.json'}")
    return 0


def checked(flag: str, parse, text: str | None):
    """`parse(text)`, its error named after the flag; None when the flag was not given."""
    try:
        return parse(text) if text else None
    except ZooError as e:
        raise ZooError(f"{flag}: {e}") from None


def parse_budgets(items: list[str]) -> dict[str, float]:
    """{"sentiment": 120.0, ...} from ["sentiment=2m", ...]; a clear error for anything else."""
    from zoo.budget import parse_duration

    budgets: dict[str, float] = {}
    for item in items:
        task, sep, budget = item.rpartition("=")
        if not sep or not task or not budget:
            raise ZooError(f"{item[:60]!r}: write each task as TASK=BUDGET, e.g. qa=5m")
        if task in budgets:
            raise ZooError(f"task {task[:60]!r} is named twice")
        budgets[task] = parse_duration(budget)
    if not budgets:
        raise ZooError("no tasks to run: name them as TASK=BUDGET, e.g. sentiment=2m qa=5m")
    return budgets


def examples_trained(zoo, adapters: list[str]) -> dict[str, int | None]:
    """How far each adapter's training got, from the manifest."""
    entries = zoo.entries()
    return {name: ((entries[name].throughput or {}).get("budget") or {}).get("examples_trained")
            if name in entries else None for name in adapters}
