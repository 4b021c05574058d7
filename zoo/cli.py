"""`zoo` command line. One dict maps command names to the modules that implement them; each module has
`configure(parser)` (its options) and `run(args) -> int`. Modules import lazily so `zoo --help` is instant."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from zoo.errors import ZooError, printable

COMMANDS = {
    "train": ("zoo.commands.train", "train adapters for tasks (names or task files)"),
    "eval": ("zoo.commands.evaluate", "evaluate adapters against the base and write reports"),
    "run": ("zoo.commands.run", "train tasks, fit the router and evaluate, ending by a deadline"),
    "list": ("zoo.commands.listing", "list the zoo's adapters (--json, --check)"),
    "doctor": ("zoo.commands.listing", "explain what is broken in a zoo and how to repair it"),
    "remove": ("zoo.commands.listing", "remove an adapter from the zoo"),
    "tasks": ("zoo.commands.listing", "list registered tasks"),
    "route": ("zoo.commands.route", "route prompts to an adapter (--train fits the router)"),
    "generate": ("zoo.commands.generate", "route and answer prompts"),
    "merge": ("zoo.commands.merge", "merge an adapter into a standalone full-precision model"),
    "combine": ("zoo.commands.combine", "build a weighted combination of adapters"),
    "push": ("zoo.commands.hub", "publish adapters to the Hugging Face Hub"),
    "pull": ("zoo.commands.hub", "download adapters or a zoo from the Hub"),
    "demo": ("zoo.commands.demo", "start the Gradio demo"),
    "serve": ("zoo.commands.serve", "serve the zoo over an OpenAI-compatible HTTP API"),
    "export": ("zoo.commands.export", "export adapters for vLLM / SGLang or llama.cpp"),
    "bench": ("zoo.commands.bench", "benchmark against the plain PEFT + Trainer recipe"),
}


class Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit code 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, printable(f"{self.prog}: error: {message} (see `{self.prog} --help`)") + "\n")


def count(low: int = 1, high: int | None = None):
    """An argparse type for a count or a size: a whole number in [low, high], else a usage error (exit 2),
    since a batch size of -1 would otherwise answer nothing and exit 0."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds} (got {value})")
        return value

    return parse


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zoo", default=None, help="zoo folder (default: $ZOO_DIR or ./zoo-out)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All commands are listed; only `only` (or every one, when None) has its module imported and configured."""
    parser = Parser(prog="zoo", description="A zoo of QLoRA task adapters on one shared base.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common(p)
        if only is None or only == name:
            mod = importlib.import_module(module)
            configure = getattr(mod, f"configure_{name}", None) or mod.configure
            configure(p)
    return parser


def run_command(args) -> int:
    mod = importlib.import_module(COMMANDS[args.command][0])
    run = getattr(mod, f"run_{args.command}", None) or mod.run
    return int(run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(only=command or "")
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.zoo:
        os.environ["ZOO_DIR"] = args.zoo
    try:
        return run_command(args)
    except ZooError as e:
        print(printable(f"zoo {args.command}: error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zoo {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line by default, the traceback with ZOO_DEBUG=1
        if os.environ.get("ZOO_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(printable(f"zoo {args.command}: internal error: {type(e).__name__}: {first} "
                        "(rerun with ZOO_DEBUG=1 for details)"), file=sys.stderr)
        return 1
