"""`zoo combine A B [C...] --name NAME`: a new adapter from a weighted combination of zoo adapters.

Methods (PEFT's add_weighted_adapter): `cat` (default; exact, any ranks, rank = sum), `svd` (any ranks,
rank = largest or --svd-rank), `linear`/`ties`/`dare_linear`/`dare_ties`/`magnitude_prune` (same rank needed),
and the `*_svd` variants (any ranks). `--search` scores a small grid of weights and methods on each parent's
task and keeps the best; `--report` rewrites reports/combinations.md from blends scored by `zoo eval --tasks`.
"""

from __future__ import annotations

import argparse
import json

from zoo.cli import count
from zoo.errors import ZooError


def configure(p: argparse.ArgumentParser) -> None:
    from zoo.combine.recipe import DEFAULT_DENSITY, METHODS
    from zoo.combine.search import DEFAULT_SEARCH_N

    p.add_argument("adapters", nargs="*", help="adapters to combine (two or more, same base)")
    p.add_argument("--name", help="name of the new adapter")
    p.add_argument("--weights", nargs="+", type=float, help="one weight per adapter (default: equal, summing to 1)")
    p.add_argument("--method", nargs="+", choices=list(METHODS), metavar="METHOD",
                   help=f"one of {', '.join(METHODS)} (default: cat); with --search, the methods to try")
    p.add_argument("--density", type=float,
                   help=f"share of entries kept by ties/dare/magnitude_prune (default {DEFAULT_DENSITY})")
    p.add_argument("--svd-rank", type=count(1, 4096), help="rank of an SVD blend (default: the largest parent rank)")
    p.add_argument("--seed", type=count(0), default=0, help="seed for DARE's random drops and the search sample")
    p.add_argument("--route-as", nargs="+", metavar="TASK", help="tasks the router may send to this blend "
                   "(the first becomes its task; default task: the first parent's)")
    p.add_argument("--force", action="store_true", help="replace an existing adapter of that name")
    s = p.add_argument_group("search")
    s.add_argument("--search", action="store_true", help="try a small grid of weights/methods and keep the best")
    s.add_argument("-n", "--n", type=count(1), default=DEFAULT_SEARCH_N, help="validation examples per task for --search")
    s.add_argument("--data-dir", default=None, help="local data folder (default: $ZOO_DATA_DIR, else the Hub)")
    s.add_argument("--no-quant", action="store_true", help="score on a full-precision base instead of NF4")
    p.add_argument("--report", action="store_true",
                   help="only rewrite reports/combinations.md from blends scored by `zoo eval NAME --tasks all`")
    p.add_argument("--json", action="store_true", help="print the new manifest entry as JSON")


def run(args) -> int:
    from zoo.combine.search import rows_from_manifest
    from zoo.reports import write_combination_report
    from zoo.store import Zoo

    zoo = Zoo(args.zoo)
    if args.report:
        path = write_combination_report(zoo, rows_from_manifest(zoo))
        print(f"[zoo] wrote {path}")
        return 0
    if len(args.adapters) < 2:
        raise ZooError("give two or more adapters to combine (or --report)")
    if not args.name:
        raise ZooError("give the new adapter a name with --name")
    entry = search_and_combine(zoo, args) if args.search else combine_once(zoo, args)
    if args.json:
        print(json.dumps(entry.to_json(), indent=2))
    else:
        blend = entry.blend
        print(f"[zoo] added {entry.name!r}: {blend.method} of {', '.join(blend.parents)} with weights "
              f"{list(blend.weights)} -> LoRA r={entry.lora['r']} ({zoo.adapter_dir(entry.name)})")
        print(f"[zoo] score it on every task with `zoo eval {entry.name} --tasks all`")
    return 0


def weights_for(args) -> tuple[float, ...]:
    k = len(args.adapters)
    return tuple(args.weights) if args.weights else tuple([1.0 / k] * k)


def combine_once(zoo, args):
    from zoo.combine import Blend, combine

    methods = args.method or ["cat"]
    if len(methods) > 1:
        raise ZooError("several --method values make sense only with --search; give one")
    blend = Blend(tuple(args.adapters), weights_for(args), methods[0], args.density, args.svd_rank, args.seed)
    return combine(zoo, blend, args.name, route_as=args.route_as, force=args.force)


def search_and_combine(zoo, args):
    """Score the grid, keep the best blend as `args.name`, and write the combinations report."""
    from zoo.combine import Blend, combine
    from zoo.combine.build import check_target_name
    from zoo.combine.search import grid_for, search
    from zoo.reports import write_combination_report

    if args.n < 1:
        raise ZooError("-n must be at least 1")
    parents = tuple(args.adapters)
    check_target_name(zoo, args.name, parents, args.force)  # fail before minutes of scoring
    blends = grid_for(zoo, parents, args.method, args.weights, args.density, args.seed)
    rows = search(zoo, blends, n=args.n, data_dir=args.data_dir, seed=args.seed, quant=not args.no_quant)
    best = rows[0]
    if best["mean_fraction"] is None:
        raise ZooError("no blend could be scored (every parent scored 0 on its own task); evaluate the parents")
    best["chosen"], best["adapter"] = True, args.name
    combine(zoo, Blend.from_json(best["blend"]), args.name, route_as=args.route_as, force=args.force)
    zoo.set_metrics(args.name, "search", {"n": args.n, "seed": args.seed, "tasks": best["tasks"],
                                          "mean_fraction": best["mean_fraction"]})
    print(f"[zoo] best: {best['name']} (mean fraction {best['mean_fraction']:.3f}); "
          f"report in {write_combination_report(zoo, rows)}")
    return zoo.get(args.name)
