"""`zoo generate "PROMPT"`: route each prompt to its adapter (or force one) and answer it."""

from __future__ import annotations

import argparse
import json

from zoo.cli import count
from zoo.commands.evaluate import MAX_BATCH
from zoo.errors import ZooError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", help="the prompt (omit to read prompts from stdin)")
    p.add_argument("--adapter", default="auto", help="auto (route), none (plain base), or an adapter name")
    p.add_argument("--show-route", action="store_true", help="print the route and probabilities too")
    p.add_argument("--json", action="store_true", help='one JSON object per prompt: {"route", "probs", "answer"}')
    p.add_argument("--max-new-tokens", type=count(1, 4096), default=None,
                   help="answer length in tokens (default: the task's, 128 for the plain base)")
    p.add_argument("--base", default=None, help="base model (default: the zoo's)")
    p.add_argument("--batch-size", type=count(1, MAX_BATCH), default=None,
                   help="prompts generated together (default: 64 in bf16 or on a GPU, 32 in fp32 on a CPU)")


def run(args) -> int:
    from zoo.commands.prompts_io import read_prompts
    from zoo.serving.runtime import NONE, Runtime
    from zoo.store import Zoo

    prompts = read_prompts(args.prompt)
    zoo = Zoo(args.zoo)
    if args.adapter not in ("auto", NONE):
        zoo.get(args.adapter)  # unknown names fail before the model loads
    if args.adapter == "auto" and not (zoo.router_dir / "router.json").exists():
        raise ZooError(f"{zoo.root} has no router: run `zoo route --train`, or choose with --adapter NAME|none")
    with Runtime(zoo, base=args.base) as runtime:
        results = runtime.generate(prompts, adapter=args.adapter, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size)
    for r in results:
        route = r.get("route", r["adapter"])
        if args.json:
            print(json.dumps({"route": route, "probs": r.get("probs", {}), "adapter": r["adapter"],
                              "answer": r["answer"]}, ensure_ascii=False))
            continue
        if args.show_route:
            probs = ", ".join(f"{k}={v:.2f}" for k, v in sorted(r.get("probs", {}).items(), key=lambda kv: -kv[1]))
            print(f"[route: {route} -> adapter {r['adapter']}{' | ' + probs if probs else ''}]")
        print(r["answer"].strip())
    return 0
