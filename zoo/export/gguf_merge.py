"""`zoo export gguf --merged`: a standalone llama.cpp model per adapter, the adapter merged into the base GGUF.

The merge itself is `zoo.merge`'s (fp32 base from the safetensors, `merge_and_unload`, its logit self-check). The
file is the base GGUF with every metadata key (vocabulary, chat template, hyperparameters) and every tensor the
adapter leaves alone copied as it is (Q4_1 stays Q4_1); the tensors it changes are written in f16 from the merged
fp32 weights, q/k rows in llama.cpp's order. The embedded base's safetensors are its Q4_1 GGUF dequantized, so
those f16 tensors hold the same base weights plus the adapter's delta.
"""

from __future__ import annotations

from pathlib import Path

from zoo.errors import ZooError


def merged_tensors(zoo, name: str, base) -> dict[str, object]:
    """GGUF tensor name -> f16 merged weight, for every module the adapter changes (checked by zoo.merge)."""
    import numpy as np

    from zoo.export.gguf import PERMUTED, lora_pairs, permute_rows
    from zoo.merge import adapter_and_base, check_ids, merge_in_memory

    import gguf
    from transformers import AutoTokenizer

    _, ref = adapter_and_base(zoo, name)
    ids = check_ids(AutoTokenizer.from_pretrained(ref.path))
    merged = merge_in_memory(zoo.adapter_dir(name), ref, ids)[0]
    state = merged.state_dict()
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, base.arch.upper()), base.n_layers)
    out = {}
    for module in lora_pairs(zoo.adapter_dir(name)):
        target = tmap.get_name(module + ".weight", try_suffixes=(".weight",))
        weight = state[module + ".weight"].float().numpy()
        kind = target.split(".")[-2]
        if kind in PERMUTED:
            weight = permute_rows(weight, getattr(base, PERMUTED[kind]))
        out[target] = np.ascontiguousarray(weight, dtype=np.float16)
    return out


def write_merged(zoo, name: str, base, dest: Path) -> str:
    """Write merged/<name>.gguf; returns its path relative to the export folder."""
    import gguf

    if base.gguf is None:
        raise ZooError("--merged needs the base as a GGUF file: pass --base-gguf")
    replaced = merged_tensors(zoo, name, base)
    reader = gguf.GGUFReader(base.gguf)
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(dest, arch=base.arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.name"):
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    writer.add_name(f"{name} (merged)")
    missing = set(replaced) - {t.name for t in reader.tensors}
    if missing:
        raise ZooError(f"{name}: the base GGUF has no {sorted(missing)[0]}")
    for t in reader.tensors:
        if t.name in replaced:
            writer.add_tensor(t.name, replaced[t.name])
        else:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return f"merged/{name}.gguf"
