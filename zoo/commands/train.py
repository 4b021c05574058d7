"""`zoo train TASK... | --all`: one QLoRA adapter per task on the shared base, saved into the zoo.

The LoRA and training flags are generated from the `LoraSettings` / `TrainSettings` dataclasses (tasks/spec.py):
every field is a flag, its help text is the field's, and its value goes through `settings_from_dict`, the
conversion task files use too. A flag that is not given leaves the task's own setting as it is.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields, replace

from zoo.distributed import ddp
from zoo.errors import ZooError

# a field's flag is --field-name, unless named here (the first name is the one --help lists first)
FLAG_NAMES = {"r": ("--rank", "-r"), "learning_rate": ("--lr", "--learning-rate"), "target_modules": ("--targets",),
              "use_dora": ("--dora",)}
NONE_MEANS = {"layers": "all", "max_examples": "all", "max_steps": "none: epochs decide",
              "time_budget": "none: examples and epochs decide"}
SECTIONS = (("lora", "LoRA"), ("train", "training"))


def configure(p: argparse.ArgumentParser) -> None:
    from tasks.spec import LoraSettings, TrainSettings

    p.add_argument("tasks", nargs="*", help="task names or task files (YAML/JSON)")
    p.add_argument("--all", action="store_true", help="train every registered task")
    p.add_argument("--name", help="adapter name (default: the task name; one task only)")
    p.add_argument("--base", default=None, help="base model: smollm2-135m (default), a Hub id or a local folder")
    p.add_argument("--no-quant", action="store_true", help="plain LoRA on a full-precision base instead of NF4")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $ZOO_DATA_DIR, else the Hub)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--no-router", action="store_true", help="do not refresh the router afterwards")
    add_scaling_flags(p)
    for (section, title), cls in zip(SECTIONS, (LoraSettings, TrainSettings)):
        group = p.add_argument_group(f"{title} settings ({cls.__name__} in tasks/spec.py)",
                                     "defaults: the dataclass's, unless the task sets its own (named after it)")
        for f in fields(cls):
            add_setting_flag(group, section, f)


def add_scaling_flags(p: argparse.ArgumentParser) -> None:
    """Training elsewhere: many tasks over a Ray cluster, or one adapter data-parallel (docs/distributed.md)."""
    from zoo.cli import count
    from zoo.distributed.ray_jobs import add_ray_flags

    group = p.add_argument_group("scaling out (docs/distributed.md)")
    add_ray_flags(group, "train each task")
    group.add_argument("--processes", type=count(1, 1024), default=None, metavar="N",
                       help="train each adapter data-parallel in N processes (accelerate launch: DDP, one device "
                            "each; the effective batch stays batch size x accumulation)")


def add_setting_flag(group, section: str, f) -> None:
    """One flag for one settings field; SUPPRESS keeps a flag that is not given out of `args`."""
    names = FLAG_NAMES.get(f.name, ("--" + f.name.replace("_", "-"),))
    kind = str(f.type)
    options = {"dest": f"{section}.{f.name}", "default": argparse.SUPPRESS,
               "help": f"{f.metadata.get('help', f.name)} ({default_text(section, f)})"}
    if kind == "bool":
        options["action"] = argparse.BooleanOptionalAction
    else:
        options["type"] = PARSERS.get(f.name) or (int if kind.startswith("int") else
                                                   float if kind.startswith("float") else str)
        options["metavar"] = METAVARS.get(f.name) or {"int": "N", "float": "X"}.get(kind.split(" ")[0], "NAME")
    group.add_argument(*names, **options)


def default_text(section: str, f) -> str:
    """The dataclass default, then each registered task that sets another one."""
    from tasks import all_tasks

    default = f.default if f.default is not MISSING else f.default_factory()
    own = [f"{name}: {show_value(f.name, getattr(getattr(spec, section), f.name))}"
           for name, spec in sorted(all_tasks().items()) if getattr(getattr(spec, section), f.name) != default]
    return f"default: {show_value(f.name, default)}" + (f"; {', '.join(own)}" if own else "")


def show_value(key: str, value) -> str:
    if value is None:
        return NONE_MEANS.get(key, "none")
    return ",".join(value) if isinstance(value, tuple) else str(value)


def parse_targets(text: str):
    """A preset name, or a comma list of module names (one name is a list of one)."""
    from tasks.spec import TARGET_PRESETS

    if text in TARGET_PRESETS:
        return text
    names = [t.strip() for t in text.split(",") if t.strip()]  # a list, as a task file gives it
    if not names:
        raise argparse.ArgumentTypeError(f"give a preset ({', '.join(TARGET_PRESETS)}) or module names")
    return names


def parse_layers(text: str):
    """`all` (every layer: the setting's None) or the number of top layers to adapt."""
    if text == "all":
        return None
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"takes a number of top layers or 'all', not {text[:40]!r}")


def parse_examples(text: str):
    """A number of examples, or `all` (the setting's None: a time budget then decides how many are used)."""
    if text == "all":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be at least 1 or 'all' (got {text[:40]!r})")


PARSERS = {"target_modules": parse_targets, "layers": parse_layers, "max_examples": parse_examples}
METAVARS = {"max_memory": "SIZE", "target_modules": "PRESET|a,b", "layers": "N|all", "time_budget": "DURATION",
            "max_examples": "N|all"}


def overrides(args) -> dict[str, dict]:
    """{"lora": {...}, "train": {...}}: only the settings given on the command line."""
    given = {section: {} for section, _ in SECTIONS}
    for dest, value in vars(args).items():
        section, _, key = dest.partition(".")
        if key and section in given:
            given[section][key] = value
    return given


def resolve_specs(args) -> list:
    from tasks import all_tasks, get_task
    from tasks.spec import LoraSettings, TrainSettings, settings_from_dict

    if args.all and args.tasks:
        raise ZooError("give task names or --all, not both")
    if not args.all and not args.tasks:
        raise ZooError("name the task(s) to train (see `zoo tasks`) or pass --all")
    specs = list(all_tasks().values()) if args.all else [get_task(t) for t in args.tasks]
    if args.name is not None and len(specs) != 1:
        raise ZooError("--name works with exactly one task")
    given = overrides(args)
    return [replace(spec, lora=settings_from_dict(LoraSettings, given["lora"], spec.lora, where="command line"),
                    train=settings_from_dict(TrainSettings, given["train"], spec.train, where="command line"))
            for spec in specs]


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
    if args.processes is not None or args.ray is not None:
        return scale_out(args, zoo, specs, base)
    loaded = load_base(base, quant=not args.no_quant, device=ddp.device())
    try:
        for spec in specs:
            entry = train_adapter(zoo, spec, loaded, name=args.name, data_dir=args.data_dir, resume=args.resume)
            if ddp.is_main():
                print_trained(entry)
    finally:
        ddp.leave()  # the router below is the main process's alone
    if not args.no_router and ddp.is_main():
        refresh_router(zoo, args.data_dir)
    return 0


def print_trained(entry) -> None:
    tp = entry.throughput
    budget = tp.get("budget")
    within = f" (time budget {budget['time_budget_s']:g} s, stopped by the {budget['stopped_by']})" if budget else ""
    print(f"[zoo] {entry.name}: {tp['examples']} examples in {tp['seconds']} s{within} "
          f"({tp['examples_per_s']} examples/s, {tp['tokens_per_s']} tokens/s), final loss {entry.final_loss}")


def scale_out(args, zoo, specs, base) -> int:
    """`--processes N` relaunches this command data-parallel; `--ray` trains every task as a Ray task."""
    from zoo.distributed.ray_jobs import options_from
    from zoo.distributed.ray_train import train_on_ray

    if args.processes is not None and args.ray is not None:
        raise ZooError("--ray and --processes do not combine: Ray runs one task per adapter, --processes one "
                       "adapter on several devices")
    if args.processes is not None:
        return ddp.relaunch(args.processes)
    if args.resume:
        raise ZooError("--resume continues a local run; a Ray task starts each adapter afresh (drop --resume)")
    names = [args.name or spec.name for spec in specs]
    landed, failed = train_on_ray(zoo, specs, names, base, not args.no_quant, args.data_dir, options_from(args))
    for entry in landed:
        print_trained(entry)
    if landed and not args.no_router:
        refresh_router(zoo, args.data_dir)
    if failed:
        raise ZooError(f"{len(failed)} of {len(specs)} tasks failed on Ray ({', '.join(sorted(failed))}; errors "
                       f"above); {len(landed)} adapter(s) installed")
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
