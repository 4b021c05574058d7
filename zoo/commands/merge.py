"""`zoo merge NAME --out DIR`: the adapter folded into a full-precision copy of its base, as a plain model folder."""

from __future__ import annotations

import argparse
import json


def configure(p: argparse.ArgumentParser) -> None:
    from zoo.merge import DTYPES, QUANTIZE

    p.add_argument("name", help="adapter to merge")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                   help="dtype of the saved weights (the merge itself is always done in fp32)")
    p.add_argument("--quantize", choices=list(QUANTIZE), default=None,
                   help="also save a bitsandbytes 4-bit copy, quantized from the merged weights, in OUT/nf4")
    p.add_argument("--base", default=None, help="base to merge into (default: the one the adapter was trained on)")
    p.add_argument("--force", action="store_true",
                   help="replace an output folder an earlier `zoo merge` wrote (never a folder of yours)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def run(args) -> int:
    from zoo.merge import merge_adapter
    from zoo.store import Zoo

    result = merge_adapter(Zoo(args.zoo), args.name, args.out, dtype=args.dtype, quantize=args.quantize,
                           force=args.force, base=args.base)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(f"[zoo] merged {result.adapter!r} into {result.out} ({result.dtype})")
    print(f"[zoo] check: max |logit diff| merged vs adapter on the fp32 base = {result.max_diff:.3g} "
          f"(tolerance {result.tolerance:.3g}); greedy answers token-identical on {result.greedy_same} "
          f"check prompts")
    if result.dtype != "fp32":
        print(f"[zoo] {result.dtype} rounding: max |logit diff| vs fp32 = {result.dtype_diff:.3g}")
    if result.nf4:
        print(f"[zoo] nf4 copy in {result.out / result.nf4['path']}: max |logit diff| vs fp32 = "
              f"{result.nf4['max_diff']:.3g}, same top-1 token {result.nf4['top1_agreement']:.1%}")
    print(f"[zoo] load it with AutoModelForCausalLM.from_pretrained({str(result.out)!r})")
    return 0
