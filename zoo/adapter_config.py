"""What an adapter folder may ask of PEFT: an allow-list, checked before PEFT ever reads the config.

An adapter can come from a stranger (`zoo pull`) or be planted in a zoo folder, and PEFT trusts its config:
a `target_modules` string is a regex matched against every module name (a catastrophic one never finishes),
`init_lora_weights: "olora"` (or pissa, loftq, eva, corda...) rewrites the shared base weights on load, a huge `r`
allocates gigabytes, `modules_to_save` / `trainable_token_indices` / `layer_replication` change the base itself.
So only plain LoRA passes: named target modules, boolean init, bounded rank, and tensors whose names and shapes
match the config (and the base's dimensions, when known). Anything else is that adapter's problem, never a crash.
"""

from __future__ import annotations

import re

MAX_RANK = 512  # vLLM's largest max_lora_rank; ten times what the built-in tasks use
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
ALLOWED = {  # key -> check of its value
    "peft_type": lambda v: v == "LORA",
    "task_type": lambda v: v in (None, "CAUSAL_LM"),
    "r": lambda v: _int(v) and 1 <= v <= MAX_RANK,
    "lora_alpha": lambda v: _number(v) and 0 < v <= 4096,
    "lora_dropout": lambda v: _number(v) and 0 <= v < 1,
    "target_modules": lambda v: isinstance(v, list) and 0 < len(v) <= 64 and all(_name(m) for m in v),
    "init_lora_weights": lambda v: isinstance(v, bool),
    "layers_to_transform": lambda v: v is None or (_int(v) and 0 <= v < 4096) or (
        isinstance(v, list) and len(v) <= 4096 and all(_int(i) and 0 <= i < 4096 for i in v)),
    "layers_pattern": lambda v: v is None or _name(v) or (isinstance(v, list) and all(_name(p) for p in v)),
    "exclude_modules": lambda v: v is None or (isinstance(v, list) and all(_name(m) for m in v)),
    "bias": lambda v: v == "none",
    "fan_in_fan_out": lambda v: v is False,
    "use_dora": lambda v: isinstance(v, bool),
    "use_rslora": lambda v: isinstance(v, bool),
    "inference_mode": lambda v: isinstance(v, bool),
    "base_model_name_or_path": lambda v: v is None or (isinstance(v, str) and len(v) < 512),
    "revision": lambda v: v is None or (isinstance(v, str) and len(v) < 128),
    "peft_version": lambda v: v is None or (isinstance(v, str) and len(v) < 64),
    "megatron_core": lambda v: v in (None, "megatron.core"),
    "qalora_group_size": lambda v: _int(v),
    # written by PEFT for a task_type-less config; only AutoPeftModel reads it (to import that class), never us
    "auto_mapping": lambda v: v is None or (isinstance(v, dict) and set(v) <= {"base_model_class", "parent_library"}
                                            and _name(v.get("base_model_class"))
                                            and re.fullmatch(r"transformers(\.[a-z0-9_]+)+", str(v.get("parent_library")))
                                            is not None),
}
UNSET = (None, False, {}, [], "")  # any other PEFT key must keep its default (no feature switched on)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _name(v) -> bool:
    return isinstance(v, str) and MODULE_NAME.fullmatch(v) is not None


def config_problems(cfg) -> list[str]:
    """Why this `adapter_config.json` must not reach PEFT (empty when it is plain, bounded LoRA)."""
    if not isinstance(cfg, dict):
        return ["adapter_config.json is not a JSON object"]
    out = []
    for key, value in cfg.items():
        check = ALLOWED.get(key)
        if check is None and value not in UNSET:
            out.append(f"adapter_config.json sets {str(key)[:40]!r}, which this project does not allow "
                       "(only plain LoRA)")
        elif check is not None and not check(value):
            out.append(f"adapter_config.json has a disallowed {key!r}: {str(value)[:60]!r} ({_why(key)})")
    for key in ("peft_type", "r", "lora_alpha", "target_modules"):
        if key not in cfg:
            out.append(f"adapter_config.json has no {key!r}")
    return out


def _why(key: str) -> str:
    return {"target_modules": "a list of plain module names; a string is a regex PEFT would run on every module",
            "init_lora_weights": "true or false; other inits rewrite the shared base weights",
            "r": f"an integer from 1 to {MAX_RANK}",
            "peft_type": "LoRA only"}.get(key, "outside what this project writes")


TENSOR = re.compile(r"base_model\.model\.(?P<module>[A-Za-z0-9_.]+)\.(?P<part>lora_A|lora_B|lora_magnitude_vector)"
                    r"(?:\.weight)?")


def tensor_problems(cfg: dict, header: dict, dims: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Tensor names must be LoRA parts of the configured modules, shaped (r, in) / (out, r); with `dims`
    (module name -> (in, out) of the base), in and out must be the base's too."""
    r, targets = cfg.get("r"), set(cfg.get("target_modules") or ())
    out = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        match = TENSOR.fullmatch(key)
        shape = info.get("shape") if isinstance(info, dict) else None
        if match is None or match["module"].rsplit(".", 1)[-1] not in targets:
            out.append(f"tensor {key[:80]!r} is not a LoRA weight of a configured target module")
        elif not isinstance(shape, list) or not all(_int(s) for s in shape):
            out.append(f"tensor {key[:80]!r} has no valid shape")
        elif match["part"] != "lora_magnitude_vector":
            out += _shape_problem(key, match, shape, r, dims)
        if len(out) >= 3:
            break
    return out


def _shape_problem(key: str, match, shape: list[int], r: int, dims) -> list[str]:
    if len(shape) != 2:
        return [f"tensor {key[:80]!r} is not a matrix"]
    rank_at = 0 if match["part"] == "lora_A" else 1
    if shape[rank_at] != r:
        return [f"tensor {key[:80]!r} has shape {shape}, not rank r={r} as the config says"]
    if dims is None:
        return []
    known = dims.get(match["module"].removeprefix("model."))
    other = shape[1] if match["part"] == "lora_A" else shape[0]
    if known is None:
        return [f"tensor {key[:80]!r} adapts a module the base does not have"]
    expected = known[0] if match["part"] == "lora_A" else known[1]
    return [] if other == expected else [f"tensor {key[:80]!r} has shape {shape}; the base needs {expected} there"]


def linear_dims(model) -> dict[str, tuple[int, int]]:
    """Module name (without the leading `model.`) -> (in_features, out_features) of every linear layer of a
    loaded base, to check an adapter's shapes before PEFT allocates anything."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "in_features") and hasattr(module, "out_features"):
            out[name.removeprefix("model.")] = (module.in_features, module.out_features)
    return out
