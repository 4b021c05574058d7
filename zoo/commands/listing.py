"""`zoo list`, `zoo doctor`, `zoo remove`, `zoo tasks`: what is in the zoo and what is wrong with it."""

from __future__ import annotations

import argparse
import json
import shutil

from zoo.errors import ZooError


def configure_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print every adapter as JSON")
    p.add_argument("--check", action="store_true", help="also explain how to repair problems")


def run_list(args) -> int:
    from zoo.store import Zoo

    zoo = Zoo(args.zoo)
    entries = zoo.entries()
    problems = swap_problems(zoo) + zoo.problems()
    rows = [{"name": n, "task": e.task, "kind": e.kind, "base": e.to_json()["base"],
             "path": str(zoo.adapter_dir(n)), "lora": e.lora, "metrics": e.metrics,
             "throughput": e.throughput, "parents": list(e.blend.parents) if e.blend else None,
             "problems": [p.what for p in problems if p.name == n]} for n, e in sorted(entries.items())]
    if args.json:
        print(json.dumps({"zoo": str(zoo.root), "adapters": rows,
                          "problems": [p.__dict__ for p in problems]}, indent=2))
        return 0
    if not rows:
        print(f"{zoo.root}: no adapters yet (run `zoo train TASK` or `make run`)")
    for r in rows:
        ev = r["metrics"].get("eval")
        score = f"{ev['metric']}={ev['adapter'][ev['metric']]:.3g} (base {ev['base'][ev['metric']]:.3g})" if ev else "-"
        state = "BROKEN" if r["problems"] else "ok"
        print(f"{r['name']:<20}{(r['task'] or '-'):<15}{r['kind'] or '-':<10}{state:<8}{score}")
    for p in problems:
        print(f"problem: {p.name}: {p.what}" + (f" -> {p.fix}" if args.check else ""))
    return 1 if (problems and args.check) else 0


def swap_problems(zoo) -> list:
    """Half-done swaps as problems (`zoo list` reports them; `zoo doctor` repairs them)."""
    from zoo.fsutil import interrupted_swaps
    from zoo.store import Problem

    return [Problem(final.name, f"an interrupted update left the previous copy in {old.name}",
                    "run `zoo doctor` to finish it") for folder in swap_folders(zoo)
            for old, final in interrupted_swaps(folder)]


def configure_doctor(p: argparse.ArgumentParser) -> None:
    pass


def run_doctor(args) -> int:
    """Finish swaps a killed process left half done (lossless, under the zoo lock), then explain the rest."""
    from zoo.store import Zoo

    zoo = Zoo(args.zoo)
    for line in repair_swaps(zoo):
        print(f"repaired: {line}")
    problems = zoo.problems()
    if not problems:
        print(f"{zoo.root}: healthy ({len(zoo.entries())} adapters)")
        return 0
    for p in problems:
        print(f"{p.name}: {p.what}\n  fix: {p.fix}")
    return 1


def swap_folders(zoo) -> list:
    """The folders whose entries `replace_dir` swaps: the adapters and the zoo root (the router)."""
    return [zoo.root / "adapters", zoo.root]


def repair_swaps(zoo) -> list[str]:
    from zoo.fsutil import finish_swap, interrupted_swaps

    if not zoo.root.is_dir():
        return []
    with zoo.lock():  # every swap in a zoo runs under this lock, so none is in progress now
        return [finish_swap(old, final) for folder in swap_folders(zoo) for old, final in interrupted_swaps(folder)]


def configure_remove(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="adapter to remove (its folder and manifest entry)")


def run_remove(args) -> int:
    from zoo.fsutil import check_name
    from zoo.store import Zoo

    zoo = Zoo(args.zoo)
    check_name(args.name, "adapter name")
    path = zoo.adapter_dir(args.name)
    if args.name not in zoo.entries() and not path.exists():
        raise ZooError(f"no adapter named {args.name!r} in {zoo.root}")
    zoo.remove(args.name)
    shutil.rmtree(path, ignore_errors=True)
    print(f"removed {args.name}")
    return 0


def configure_tasks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def run_tasks(args) -> int:
    from tasks import all_tasks

    tasks = all_tasks()
    if args.json:
        print(json.dumps({n: {"description": s.description, "dataset": s.dataset, "metric": s.metric}
                          for n, s in tasks.items()}, indent=2))
        return 0
    for n, s in sorted(tasks.items()):
        print(f"{n:<15}{s.metric:<10}{s.dataset:<25}{s.description}")
    return 0
