"""`zoo eval [NAME...]`: adapter vs base on each task's validation sample and its out-of-domain set, every score
with a 95% bootstrap interval (paired for the change); reports and manifest metrics."""

from __future__ import annotations

import argparse
import json

from zoo.cli import count
from zoo.errors import ZooError

MAX_BATCH = 512


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="adapters to evaluate (default: every healthy adapter)")
    p.add_argument("-n", "--n", type=count(1), default=200,
                   help="examples per task and data set (in and out of domain), a fixed seeded sample (default 200)")
    p.add_argument("--ood-n", type=count(1), default=None,
                   help="examples of the out-of-domain set, when fewer than -n will do (default: -n)")
    p.add_argument("--seed", type=count(0), default=0, help="seed of the sample (default 0)")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $ZOO_DATA_DIR, else the Hub)")
    p.add_argument("--tasks", nargs="+", help="score the adapter(s) on these tasks too ('all' = every task)")
    p.add_argument("--router", action="store_true", help="evaluate the router instead (reports/router.md)")
    p.add_argument("--base-answers", nargs="+", metavar="TASK",
                   help="only generate the plain base's answers on these tasks' samples and keep them for a later "
                        "`zoo eval` (what `zoo run` times before it plans training)")
    p.add_argument("--defer-ood", action="store_true",
                   help="with --base-answers: answer the in-domain samples only and count the out-of-domain "
                        "samples' prompt tokens (what `zoo run` sizes those samples from)")
    p.add_argument("--batch-size", type=count(1, MAX_BATCH), default=None,
                   help="prompts generated together (default: 64 in bf16 or on a GPU, 32 in fp32 on a CPU)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    from zoo.distributed.ray_jobs import add_ray_flags

    add_ray_flags(p.add_argument_group("scaling out (docs/distributed.md)"), "evaluate each adapter")


def run(args) -> int:
    from zoo.store import Zoo

    zoo = Zoo(args.zoo)
    if args.router:
        return router_report(zoo, args)
    if args.base_answers:
        return base_answers(zoo, args)
    if args.defer_ood:
        raise ZooError("--defer-ood goes with --base-answers TASK...")
    names = args.names or zoo.healthy()
    if not names:
        raise ZooError(f"no adapters to evaluate in {zoo.root}; train some with `zoo train TASK`")
    for name in names:
        zoo.get(name)
    if args.ray is not None:
        return on_ray(zoo, names, args)
    if args.tasks:
        return cross_task(zoo, names, args)
    return per_task(zoo, names, args)


def on_ray(zoo, names, args) -> int:
    """Each adapter on its own task as one Ray task; reports and metrics land here as each finishes."""
    from zoo.distributed.ray_eval import eval_on_ray
    from zoo.distributed.ray_jobs import options_from

    if args.tasks or args.router:
        raise ZooError("--ray evaluates adapters on their own tasks; drop --tasks/--router or --ray")
    results, failed = eval_on_ray(zoo, names, args.n, args.seed, args.data_dir, args.batch_size, options_from(args),
                                  ood_n=args.ood_n)
    if args.json:
        print(json.dumps(results, indent=2))
    elif results:
        print_table(results)
    if failed:
        raise ZooError(f"{len(failed)} of {len(names)} evaluations failed on Ray ({', '.join(sorted(failed))}; "
                       "errors above)")
    return 0


def router_report(zoo, args) -> int:
    """The router's report, with the routing regret (task metric lost to routing mistakes) when the zoo has
    adapters to answer with: that part runs the model, `-n` examples per task."""
    from router.regret import routing_regret
    from router.report import write_router_report
    from zoo.serving.runtime import Runtime

    regret = None
    if zoo.healthy():
        with Runtime(zoo) as runtime:
            regret = routing_regret(runtime, n=args.n, data_dir=args.data_dir, seed=args.seed,
                                    batch_size=args.batch_size)
    result = write_router_report(zoo, data_dir=args.data_dir, regret=regret)
    print(json.dumps(result, indent=2) if args.json else f"[zoo] wrote {zoo.reports_dir / 'router.md'}")
    return 0


def base_answers(zoo, args) -> int:
    """The base's answers on each task's samples, generated (or read back) and kept; the seconds per set."""
    from tasks import get_task
    from zoo.evaluation import keep_base_answers
    from zoo.serving.runtime import Runtime

    specs = [get_task(t) for t in args.base_answers]
    with Runtime(zoo) as runtime:
        results = {s.name: keep_base_answers(runtime, s, n=args.n, data_dir=args.data_dir, seed=args.seed,
                                             batch_size=args.batch_size, ood_n=args.ood_n,
                                             defer_ood=args.defer_ood) for s in specs}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for task, sets in results.items():
        for r in sets.values():
            said = r.get("skipped") or (f"{r['n']} prompts, {r['prompt_tokens']} tokens, not answered yet"
                                        if r.get("deferred") else
                                        f"{r['n']} answers {'read back' if r['kept'] else 'generated'}, "
                                        f"{r['seconds']:.0f} s of generation")
            print(f"[zoo] base on {task} / {r['dataset']}: {said}")
    return 0


def per_task(zoo, names, args) -> int:
    from tasks import spec_for_adapter
    from zoo.evaluation import evaluate, summary
    from zoo.reports import read_loss_log, write_task_report
    from zoo.serving.runtime import Runtime

    results = []
    with Runtime(zoo) as runtime:
        for name in names:
            spec = spec_for_adapter(zoo, name)
            result = evaluate(runtime, name, spec, n=args.n, data_dir=args.data_dir, seed=args.seed,
                              batch_size=args.batch_size, ood_n=args.ood_n)
            write_task_report(zoo.reports_dir, result, read_loss_log(zoo.adapter_dir(name)))
            zoo.set_metrics(name, "eval", summary(result))
            results.append(summary(result))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
        print(f"[zoo] reports in {zoo.reports_dir}")
    return 0


def cross_task(zoo, names, args) -> int:
    """Each adapter on several tasks (how a blend does everywhere), each score with its 95% interval."""
    from tasks import all_tasks, get_task
    from zoo.evaluation import adapter_on_task
    from zoo.serving.runtime import Runtime

    specs = list(all_tasks().values()) if args.tasks == ["all"] else [get_task(t) for t in args.tasks]
    results = []
    with Runtime(zoo) as runtime:
        for name in names:
            done = {s.name: adapter_on_task(runtime, name, s, n=args.n, data_dir=args.data_dir, seed=args.seed,
                                            batch_size=args.batch_size) for s in specs}
            scores = {task: d["scores"] for task, d in done.items()}
            results.append({"name": name, "n": args.n, "tasks": scores,
                            "intervals": {task: d["intervals"] for task, d in done.items()}})
            zoo.set_metrics(name, "tasks", scores)
    if any(zoo.get(n).kind == "combined" for n in names):
        from zoo.combine.search import rows_from_manifest
        from zoo.reports import write_combination_report

        write_combination_report(zoo, rows_from_manifest(zoo))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_cross_task(results)
    return 0


def print_cross_task(results: list[dict]) -> None:
    from zoo.reports import fmt_interval

    for r in results:
        for task, sc in r["tasks"].items():
            ci = r["intervals"][task]
            print(f"{r['name']:<20} {task:<15} " + "  ".join(f"{k}={fmt_interval(k, v, ci.get(k))}"
                                                             for k, v in sc.items()))


def print_table(results: list[dict]) -> None:
    """One line per adapter and data set (in domain, out of domain): the main metric with its 95% intervals."""
    from zoo.reports import bounds_of, fmt_interval, scored_ood

    print(f"{'adapter':<18}{'task':<15}{'data':<20}{'metric':<9}{'base':>20}{'adapter':>20}{'change':>22}")
    for r in results:
        m = r["metric"]
        ood = scored_ood(r)
        for data, block in [(r["split"], r), *([(f"ood:{ood['dataset']}", ood)] if ood else [])]:
            b, a = block["base"][m], block["adapter"][m]
            cells = [fmt_interval(m, b, bounds_of(block, "base", m)),
                     fmt_interval(m, a, bounds_of(block, "adapter", m)),
                     fmt_interval(m, a - b, bounds_of(block, "change", m), sign=True)]
            print(f"{r['name']:<18}{r['task']:<15}{data:<20}{m:<9}{cells[0]:>20}{cells[1]:>20}{cells[2]:>22}")
        if (r.get("ood") or {}).get("skipped"):
            print(f"[zoo] {r['name']}: out-of-domain set not scored: {r['ood']['skipped']}")
