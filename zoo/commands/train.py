"""`zoo train TASK... | --all`: one QLoRA adapter per task on the shared base, saved into the zoo."""

from __future__ import annotations

import argparse

from zoo.errors import ZooError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("tasks", nargs="*", help="task names or task files (YAML/JSON)")
    p.add_argument("--all", action="store_true", help="train every registered task")
    p.add_argument("--name", help="adapter name (default: the task name; one task only)")
    p.add_argument("--base", default=None, help="base model: smollm2-135m (default), a Hub id or a local folder")
    p.add_argument("--no-quant", action="store_true", help="plain LoRA on a full-precision base instead of NF4")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $ZOO_DATA_DIR, else the Hub)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--no-router", action="store_true", help="do not refresh the router afterwards")
    b = p.add_argument_group("budget")
    b.add_argument("--max-steps", type=int)
    b.add_argument("--max-examples", type=int)
    b.add_argument("--epochs", type=float)
    t = p.add_argument_group("training (defaults come from the task spec)")
    t.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--grad-accum", type=int)
    t.add_argument("--optimizer", help="e.g. adamw_torch, adamw_bnb_8bit, paged_adamw_8bit")
    t.add_argument("--gradient-checkpointing", action="store_true", default=None)
    t.add_argument("--max-seq-len", type=int)
    t.add_argument("--save-steps", type=int)
    t.add_argument("--seed", type=int)
    lo = p.add_argument_group("LoRA (defaults come from the task spec)")
    lo.add_argument("--rank", "-r", dest="r", type=int)
    lo.add_argument("--alpha", type=int)
    lo.add_argument("--dropout", type=float)
    lo.add_argument("--targets", help="attention | mlp | all-linear | comma list such as q_proj,v_proj")
    lo.add_argument("--layers", help="adapt only the top N layers, or 'all'")
    lo.add_argument("--dora", action="store_true", default=None, help="use DoRA")


def overrides(args) -> tuple[dict, dict]:
    train = {k: getattr(args, k) for k in ("max_steps", "max_examples", "epochs", "learning_rate", "batch_size",
                                           "grad_accum", "optimizer", "gradient_checkpointing", "max_seq_len",
                                           "save_steps", "seed")}
    lora = {"r": args.r, "alpha": args.alpha, "dropout": args.dropout, "use_dora": args.dora}
    if args.targets:
        lora["target_modules"] = args.targets if "," not in args.targets and args.targets in (
            "attention", "mlp", "all-linear") else tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if args.layers:
        if args.layers == "all":
            lora["layers"] = None
            lora["_all_layers"] = True
        elif args.layers.isdigit():
            lora["layers"] = int(args.layers)
        else:
            raise ZooError(f"--layers takes a number or 'all', not {args.layers!r}")
    return lora, train


def resolve_specs(args) -> list:
    from tasks import all_tasks, get_task

    if args.all and args.tasks:
        raise ZooError("give task names or --all, not both")
    if not args.all and not args.tasks:
        raise ZooError("name the task(s) to train (see `zoo tasks`) or pass --all")
    specs = list(all_tasks().values()) if args.all else [get_task(t) for t in args.tasks]
    if args.name is not None and len(specs) != 1:
        raise ZooError("--name works with exactly one task")
    lora, train = overrides(args)
    all_layers = lora.pop("_all_layers", False)
    out = []
    for spec in specs:
        spec = spec.with_overrides(lora=lora, train=train)
        if all_layers:
            from dataclasses import replace

            spec = replace(spec, lora=replace(spec.lora, layers=None))
        out.append(spec)
    return out


def run(args) -> int:
    from zoo.base import load_base
    from zoo.data import describe_source, load_rows
    from zoo.fsutil import check_name
    from zoo.store import Zoo
    from zoo.train import train_adapter

    specs = resolve_specs(args)
    if args.name is not None:
        check_name(args.name, "adapter name")
    for spec in specs:  # cheap checks first: a missing dataset should not cost a model load
        describe_source(spec, spec.train_split, args.data_dir)
        load_rows(spec, spec.train_split, args.data_dir, limit=1)
    zoo = Zoo(args.zoo)
    base = args.base or _zoo_base(zoo)
    loaded = load_base(base, quant=not args.no_quant)
    for spec in specs:
        entry = train_adapter(zoo, spec, loaded, name=args.name, data_dir=args.data_dir, resume=args.resume)
        tp = entry.throughput
        print(f"[zoo] {entry.name}: {tp['examples']} examples in {tp['seconds']} s "
              f"({tp['examples_per_s']} examples/s, {tp['tokens_per_s']} tokens/s), final loss {entry.final_loss}")
    if not args.no_router:
        refresh_router(zoo, args.data_dir)
    return 0


def _zoo_base(zoo) -> str:
    from zoo.base import DEFAULT_BASE

    if zoo.manifest_path.exists():
        for e in zoo.entries().values():
            if e.base.id:
                return e.base.id
    return DEFAULT_BASE


def refresh_router(zoo, data_dir) -> None:
    """A new task needs a router that knows it; a failure here never loses the trained adapter."""
    try:
        from router import fit_router
    except ImportError:
        return
    try:
        fit_router(zoo, data_dir=data_dir)
        print(f"[zoo] router refreshed for tasks: {', '.join(sorted({e.task for e in zoo.entries().values()}))}")
    except ZooError as e:
        print(f"[zoo] warning: router not refreshed: {e}")
