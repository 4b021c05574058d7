"""Checks before a blend is built: healthy parents on one base, and nothing `add_weighted_adapter` gets wrong.

`plan(zoo, blend)` runs them all and returns the blend with a covering parent first (PEFT lays the new adapter
out like its first parent).
"""

from __future__ import annotations

import json

from zoo.combine.recipe import SAME_RANK, Blend
from zoo.errors import ZooError


def parent_entries(zoo, parents) -> tuple[dict, object]:
    """Every parent exists, is undamaged and was trained on the same base; returns their entries and that base."""
    from zoo.base import resolve_base

    entries = {p: zoo.get(p) for p in parents}
    hashes = {p: e.base.hash for p, e in entries.items()}
    if len(set(hashes.values())) > 1:
        raise ZooError(f"adapters come from different bases {hashes}; combine only adapters of one base")
    first = entries[parents[0]].base
    if not first.id:
        raise ZooError(f"adapter {parents[0]!r} does not record its base; retrain it")
    ref = resolve_base(first.id)
    return {p: zoo.require_healthy(p, ref) for p in parents}, ref


def adapter_config(zoo, name: str) -> dict:
    return json.loads((zoo.adapter_dir(name) / "adapter_config.json").read_text())


def refuse_unsupported(name: str, cfg: dict) -> None:
    """Features add_weighted_adapter silently gets wrong: refuse them, with the reason."""
    why = None
    if cfg.get("peft_type", "LORA") != "LORA":
        why = f"it is a {cfg.get('peft_type')} adapter; only LoRA adapters can be combined"
    elif cfg.get("use_dora"):
        why = "it uses DoRA: add_weighted_adapter combines A/B but not the magnitude vectors"
    elif cfg.get("use_rslora"):
        why = "it uses rsLoRA: the new adapter gets lora_alpha = r, so its scale would be sqrt(r) instead of 1"
    elif cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        why = "it trains biases, which add_weighted_adapter does not combine"
    elif cfg.get("modules_to_save"):
        why = f"it fully trains {cfg['modules_to_save']} (modules_to_save), which cannot be blended"
    elif cfg.get("trainable_token_indices"):
        why = "it trains token embeddings (trainable_token_indices), which add_weighted_adapter does not combine"
    elif cfg.get("target_parameters"):
        why = "it targets nn.Parameters (target_parameters), which add_weighted_adapter does not support"
    if why:
        raise ZooError(f"cannot combine {name!r}: {why}; merge it alone with `zoo merge` or retrain it as plain LoRA")


def max_rank(cfg: dict) -> int:
    return max([cfg["r"], *(cfg.get("rank_pattern") or {}).values()])


def check_ranks(configs: dict[str, dict], method: str) -> None:
    ranks = {n: max_rank(c) for n, c in configs.items()}
    patterns = any(c.get("rank_pattern") for c in configs.values())
    if method in SAME_RANK and (len(set(ranks.values())) > 1 or patterns):
        raise ZooError(f"method {method!r} needs adapters of one rank without rank_pattern (ranks: {ranks}); "
                       "use --method cat (exact, rank = sum) or --method svd (rank = largest)")


def layout(cfg: dict) -> tuple[frozenset | None, frozenset | str]:
    """(layers, target modules) an adapter covers; None layers = every layer; a str target = a regex."""
    layers = cfg.get("layers_to_transform")
    layers = None if layers is None else frozenset([layers] if isinstance(layers, int) else layers)
    targets = cfg.get("target_modules")
    return layers, targets if isinstance(targets, str) else frozenset(targets or ())


def covering_parent(configs: dict[str, dict]) -> int:
    """Index of a parent whose layers and modules include every other parent's (it must come first)."""
    names = list(configs)
    layouts = [layout(configs[n]) for n in names]
    if len({c.get("layers_pattern") and str(c.get("layers_pattern")) for c in configs.values()}) > 1:
        raise ZooError(f"adapters {names} use different layers_pattern; retrain them with the same settings")
    if any(isinstance(t, str) for _, t in layouts):
        if len(set(layouts)) > 1:
            raise ZooError(f"adapters {names} target modules by different regexes; retrain them with one target list")
        return 0
    all_targets = frozenset().union(*(t for _, t in layouts))
    for i, (layers, targets) in enumerate(layouts):
        if targets >= all_targets and all(layers is None or (other is not None and other <= layers)
                                          for other, _ in layouts):
            return i
    raise ZooError(
        f"adapters {names} adapt different layers/modules and none covers the others: add_weighted_adapter lays "
        "the new adapter out like its first parent and would drop the rest; retrain them with the same --layers "
        "and --targets")


def plan(zoo, blend: Blend) -> tuple[Blend, dict, object]:
    """Validate a blend against the zoo; returns it (parents reordered if needed), the entries and the base."""
    entries, ref = parent_entries(zoo, blend.parents)
    configs = {p: adapter_config(zoo, p) for p in blend.parents}
    for p, cfg in configs.items():
        refuse_unsupported(p, cfg)
    check_ranks(configs, blend.method)
    first = covering_parent(configs)
    return (blend.reordered(first) if first else blend), entries, ref
