"""`zoo route "PROMPT"`: which adapter would answer (or `none`: the plain base), with every route's probability.

`zoo route --train` fits the router for the zoo's tasks. Without PROMPT, prompts come from stdin, one per
line, as plain text or JSONL objects with a `prompt` field; `--json` prints one JSON object per prompt.
"""

from __future__ import annotations

import argparse
import json
import sys

from zoo.cli import count

BATCH = 256


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default=None, help="prompt to route (default: read prompts from stdin)")
    p.add_argument("--train", action="store_true", help="fit the router for the zoo's tasks and save it in the zoo")
    p.add_argument("--tasks", nargs="+", default=None, help="with --train: fit for these tasks instead")
    p.add_argument("--add-task", default=None, metavar="TASK",
                   help="add one more task (a name or a task file) to the saved router: the earlier routes keep "
                        "their weights, only the new route is fit; reports how much the earlier routes moved")
    p.add_argument("--rows", type=count(1), default=300,
                   help="with --train: training rows sampled per task (default 300)")
    p.add_argument("--features", choices=("mix", "ngrams", "minilm"), default=None,
                   help="with --train: feature set (default mix; ngrams needs no embedding model but is less accurate)")
    p.add_argument("--seed", type=count(0), default=0, help="with --train: seed of the sample (default 0)")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $ZOO_DATA_DIR, else the Hub)")
    p.add_argument("--json", action="store_true", help='one {"route", "probs"} JSON object per prompt')


def run(args) -> int:
    from zoo.store import Zoo

    zoo = Zoo(args.zoo)
    if args.add_task:
        return add_task(zoo, args)
    if args.train:
        train(zoo, args)
        if args.prompt is None:
            return 0
    from router import load_router
    from zoo.commands.prompts_io import read_prompts

    prompts = read_prompts(args.prompt)
    router = load_router(zoo)
    for i in range(0, len(prompts), BATCH):
        chunk = prompts[i:i + BATCH]
        for prompt, result in zip(chunk, router.route(chunk)):
            print(json.dumps(result) if args.json else describe(prompt, result, single=len(prompts) == 1))
    return 0


def train(zoo, args) -> None:
    from router import fit_router

    params = {"features": args.features} if args.features else {}
    router = fit_router(zoo, data_dir=args.data_dir, seed=args.seed, tasks=args.tasks, rows_per_task=args.rows,
                        **params)
    print(f"[zoo] router fit for routes {', '.join(map(str, router.classes_))} "
          f"(threshold {router.threshold}); saved in {zoo.router_dir}", file=sys.stderr)


def add_task(zoo, args) -> int:
    from router.refit import add_task as refit_with

    report = refit_with(zoo, args.add_task, data_dir=args.data_dir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"[zoo] router refit with {args.add_task!r}; accuracy per earlier route before -> after:")
        for route, acc in report["per_route"].items():
            print(f"  {route:<16}{acc['before']:.3f} -> {acc['after']:.3f}")
        print(f"[zoo] largest drop {report['largest_drop']:.3f}; {report['changed']:.1%} of those prompts changed "
              f"route; refit in {report['fit_seconds']} s")
    return 0


def describe(prompt: str, result: dict, single: bool) -> str:
    probs = "  ".join(f"{r}={p:.3f}" for r, p in sorted(result["probs"].items(), key=lambda kv: -kv[1]))
    head = "" if single else f"{prompt[:60].replace(chr(10), ' ')!r}: "
    return f"{head}{result['route']}    ({probs})"
