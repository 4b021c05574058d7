"""`zoo export vllm|gguf --out DIR [NAME ... | --all]`: the zoo's adapters in the shape another engine loads."""

from __future__ import annotations

import argparse

from zoo.errors import ZooError


def configure(p: argparse.ArgumentParser) -> None:
    engines = p.add_subparsers(dest="engine", metavar="ENGINE", required=True, parser_class=type(p))
    for engine, help_text in (("vllm", "PEFT folders vLLM and SGLang load, checked against their rules, with "
                                       "launch scripts and the router's name mapping"),
                              ("gguf", "llama.cpp LoRA adapter GGUFs, with a llama-server launch line")):
        e = engines.add_parser(engine, help=help_text, description=help_text)
        e.add_argument("names", nargs="*", metavar="NAME", help="adapters to export (or --all)")
        e.add_argument("--all", action="store_true", help="every healthy adapter (broken ones are named and skipped)")
        e.add_argument("--out", required=True, help="output folder")
        e.add_argument("--zoo", default=argparse.SUPPRESS, help="zoo folder (default: $ZOO_DIR or ./zoo-out)")
        if engine == "vllm":
            configure_vllm(e)
        if engine == "gguf":
            from zoo.export.gguf import add_options

            add_options(e)


def configure_vllm(e: argparse.ArgumentParser) -> None:
    from zoo.export.rules import MAX_LORA_RANKS

    e.add_argument("--max-lora-rank", type=int, choices=MAX_LORA_RANKS, default=None, metavar="R",
                   help="vLLM's --max-lora-rank, one of " + ", ".join(map(str, MAX_LORA_RANKS)) +
                        " (default: the smallest that holds every exported adapter); adapters above it are refused")
    e.add_argument("--base-id", default=None, metavar="ORG/NAME",
                   help="the base's Hub id, when it was trained from a local folder that does not record one")


def export_names(zoo, args) -> list[str]:
    """The named adapters (each must exist), or every healthy one with --all."""
    if bool(args.names) == bool(args.all):
        raise ZooError("give adapter NAMEs or --all")
    if args.names:
        for name in args.names:
            zoo.get(name)
        return list(dict.fromkeys(args.names))
    for p in zoo.problems():
        print(f"[zoo] skipping {p.name}: {p.what}")
    healthy = zoo.healthy()
    if not healthy:
        raise ZooError(f"no healthy adapters to export in {zoo.root}; train some with `zoo train TASK`")
    return healthy


def run(args) -> int:
    from zoo.store import Zoo

    zoo = Zoo(args.zoo)
    names = export_names(zoo, args)
    if args.engine == "vllm":
        from zoo.export.vllm import export_vllm
        return export_vllm(zoo, names, args.out, args)
    from zoo.export.gguf import export_gguf
    return export_gguf(zoo, names, args.out, args)
