"""Whole-model GGUFs written from the base GGUF: the base with its quantized weights expanded to f32/f16, or with
an adapter merged in (`zoo export gguf --merged`).

llama.cpp multiplies a Q4_1 weight with activations it first rounds to 8 bits (Q8_1 blocks); with f32 weights
it multiplies in f32. So the expanded base is the same model PEFT holds after the embedded base's conversion
(the Q4_1 weights dequantized), run without that rounding: `make llama-check` uses it to tell an export error
from the engine's arithmetic. A merged file folds `scale * B @ A` into every adapted weight of that expanded base
(rows of q/k permuted as llama.cpp stores them), so it answers like base + adapter with no LoRA at run time.
Metadata (tokenizer, chat template, hyper-parameters) is copied from the base GGUF unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ZooError

OUTTYPES = ("f32", "f16")  # weights of a whole-model file: never re-quantized here


@dataclass
class ExpandedBase:
    """A base GGUF read and expanded once (parsing its vocabulary and dequantizing take seconds): every merged
    file of an export starts from it."""

    reader: object  # gguf.GGUFReader: the metadata to copy
    tensors: dict[str, object]
    outtype: str


def expand_base(base_gguf: Path, outtype: str = "f32") -> ExpandedBase:
    import gguf

    if outtype not in OUTTYPES:
        raise ZooError(f"whole-model GGUF type {outtype!r}: one of {', '.join(OUTTYPES)}")
    reader = gguf.GGUFReader(base_gguf)
    return ExpandedBase(reader, expanded_tensors(reader, outtype), outtype)


def expanded_tensors(reader, outtype: str = "f32") -> dict[str, object]:
    """Every tensor of a GGUF as a numpy array (rows, columns) in ggml order: quantized ones dequantized, then
    2-D weights in `outtype`; 1-D tensors (norms) stay f32, as llama.cpp's converters keep them."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    out = {}
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            data = quants.dequantize(data, t.tensor_type)
        data = data.astype(np.float32).reshape(tuple(int(n) for n in reversed(t.shape)))
        if data.ndim > 1 and outtype == "f16":
            data = data.astype(np.float16)
        out[t.name] = data
    return out


def merge_deltas(tensors: dict, lora: dict[str, object], scale: float) -> list[str]:
    """Add `scale * lora_b @ lora_a` to each adapted weight (the adapter GGUF's tensors, already in llama.cpp's
    layout and row order); returns the names changed. A delta that does not fit its weight is refused."""
    import numpy as np

    changed = []
    for name in sorted(n[: -len(".lora_a")] for n in lora if n.endswith(".lora_a")):
        a, b = (np.asarray(lora[f"{name}.lora_{p}"], dtype=np.float32) for p in "ab")
        weight = tensors.get(name)
        if weight is None or weight.shape != (b.shape[0], a.shape[1]):
            raise ZooError(f"{name}: the adapter's delta {[b.shape[0], a.shape[1]]} does not fit the base GGUF's "
                           f"{list(weight.shape) if weight is not None else 'missing tensor'}")
        tensors[name] = (weight.astype(np.float32) + scale * (b @ a)).astype(weight.dtype)
        changed.append(name)
    return changed


def copy_metadata(reader, writer, name: str | None = None) -> None:
    """Every key of the base GGUF except those the writer sets itself (architecture, the file's own counts) and
    the file type (the tensors' type changes)."""
    from gguf import GGUFValueType, Keys

    skip = {Keys.General.ARCHITECTURE, Keys.General.FILE_TYPE}
    for field in reader.fields.values():
        if field.name in skip or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        value = name if (field.name == Keys.General.NAME and name) else field.contents()
        writer.add_key_value(field.name, value, vtype, sub_type=sub_type)


def write_full_gguf(base: ExpandedBase, out: Path, lora: dict | None = None, scale: float = 1.0,
                    name: str | None = None) -> list[str]:
    """The expanded base at `out` (with `lora`'s deltas merged, if given; `base` itself is left as it was);
    returns the tensors the adapter changed. Written to a temporary name and renamed: a killed write leaves no
    half file."""
    import os

    import gguf

    from zoo.export.gguf import write_tensors

    tensors = dict(base.tensors)  # merge_deltas replaces the changed arrays, never writes into them
    changed = merge_deltas(tensors, lora, scale) if lora else []
    arch = base.reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    staged = out.with_name(f".{out.name}.{os.getpid()}.part")
    writer = gguf.GGUFWriter(staged, arch=arch)
    try:
        copy_metadata(base.reader, writer, name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if base.outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        write_tensors(writer, tensors)
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    return changed


__all__ = ["ExpandedBase", "expand_base", "expanded_tensors", "merge_deltas", "write_full_gguf"]
