"""`zoo export gguf`: each adapter as a llama.cpp LoRA adapter GGUF, with a llama-server launch script.

The files are what llama.cpp's own `convert_lora_to_gguf.py` writes for the base's architecture (checked against
it in tests/test_export_gguf.py): `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and per
adapted module `blk.N.<tensor>.weight.lora_a` (r x in) / `.lora_b` (out x r). For the llama architecture the
converter permutes the rows of q/k weights (llama.cpp's rotary layout differs from transformers'); for a LoRA
delta B @ A that is a permutation of B's rows, A unchanged. Our tensors are also checked against the base GGUF's
own tensors (names and shapes), so an adapter that llama.cpp would refuse is refused here first.

The export folder::

    adapters/<name>.gguf       one LoRA adapter per zoo adapter (f32, or f16 with --outtype f16)
    routes.json                base GGUF, each adapter's llama-server lora id, route -> adapter
    launch_llama_server.sh     llama-server -m BASE --lora a.gguf,b.gguf,... --lora-init-without-apply
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

from zoo.errors import ZooError

ROUTES_FILE = "routes.json"
FORMAT = "adapter-zoo-export"
ENGINE = "llama-server"
NONE = "none"  # the router's route for "no adapter" (router.model.NONE)
OUTTYPES = ("f32", "f16")
# transformers class -> llama.cpp architecture, for the classes llama.cpp's converter maps with q/k permuted
# (`conversion/llama.py: LlamaModel.undo_permute`). Other architectures are refused, not guessed.
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}
PERMUTED = {"attn_q": "n_head", "attn_k": "n_kv_head"}


@dataclass
class GgufBase:
    """What a llama.cpp adapter must fit: the architecture, head counts (for the q/k permutation), the base GGUF
    and its tensors' shapes in ggml order (ne), when a base GGUF is known."""

    arch: str
    n_layers: int
    n_head: int
    n_kv_head: int
    gguf: Path | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def add_options(p) -> None:
    """`zoo export gguf`'s own options (called by zoo/commands/export.py)."""
    p.add_argument("--outtype", choices=OUTTYPES, default="f32", help="tensor type of the adapter files (default f32)")
    p.add_argument("--base-gguf", default=None, metavar="FILE",
                   help="the base as a GGUF file for llama-server (default: the embedded base's Q4_1 GGUF); "
                        "adapters are checked against its tensors")
    p.add_argument("--merged", action="store_true",
                   help="also write merged/<name>.gguf: the base GGUF's weights expanded to --outtype with the "
                        "adapter folded in (a standalone model for llama.cpp or Ollama; needs the base GGUF)")


# the base ---------------------------------------------------------------------------------------------------------
def embedded_gguf(ref) -> Path | None:
    """The GGUF file shipped with an embedded base (the file its safetensors were converted from), named by
    its embedded name or by its converted folder in the cache."""
    import importlib.util

    from zoo.base import EMBEDDED, cache_dir

    name = ref.id if ref.id in EMBEDDED else next(
        (n for n in EMBEDDED if (cache_dir() / n).resolve() == Path(ref.path).resolve()), None)
    info = EMBEDDED.get(name)
    spec = importlib.util.find_spec(info["package"]) if info else None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / info["gguf"]
    return path if path.is_file() else None


def read_base_gguf(path: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    """(architecture, tensor name -> shape in ggml order) of a model GGUF, from its header alone (gguf's
    GGUFReader also parses every metadata array, the 49k-entry vocabulary included: seconds we do not need).
    A file that is not a model GGUF is refused."""
    try:
        with open(path, "rb") as f:
            meta, shapes = _read_header(f)
    except (OSError, ValueError, KeyError, OverflowError, UnicodeDecodeError, struct.error) as e:
        raise ZooError(f"{path} is not a readable model GGUF ({type(e).__name__}); pass the base's .gguf "
                       "with --base-gguf") from None
    if meta.get("general.type", "model") != "model" or not isinstance(meta.get("general.architecture"), str):
        raise ZooError(f"{path} is a GGUF of type {str(meta.get('general.type'))[:40]!r}, not a model; pass the "
                       "base model's .gguf")
    return meta["general.architecture"], shapes


def _read_header(f) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """GGUF v2/v3 header: string metadata values (others skipped) and each tensor's name and ne."""
    from gguf import GGUF_MAGIC, GGUFValueType

    magic, version, n_tensors, n_kv = struct.unpack("<IIQQ", f.read(24))
    if magic != GGUF_MAGIC or version not in (2, 3) or n_tensors > 1 << 20 or n_kv > 1 << 20:
        raise ValueError("not a little-endian GGUF v2/v3 file")
    meta = {}
    for _ in range(n_kv):
        key = _string(f)
        vtype = GGUFValueType(_unpack(f, "<I"))
        meta[key] = _value(f, vtype)
    shapes = {}
    for _ in range(n_tensors):
        name, n_dims = _string(f), _unpack(f, "<I")
        if n_dims > 8:
            raise ValueError("tensor with more than 8 dimensions")
        shapes[name] = struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims))
        f.read(12)  # ggml type (u32) and data offset (u64)
    return meta, shapes


SCALAR = {"UINT8": "B", "INT8": "b", "UINT16": "H", "INT16": "h", "UINT32": "I", "INT32": "i", "FLOAT32": "f",
          "BOOL": "?", "UINT64": "Q", "INT64": "q", "FLOAT64": "d"}


def _unpack(f, fmt: str):
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _string(f) -> str:
    n = _unpack(f, "<Q")
    if n > 1 << 24:
        raise ValueError("string longer than 16 MB")
    return f.read(n).decode("utf-8")


def _value(f, vtype):
    """A string value; any other is skipped (None), arrays element by element."""
    if vtype.name == "STRING":
        return _string(f)
    if vtype.name != "ARRAY":
        f.seek(struct.calcsize("<" + SCALAR[vtype.name]), 1)
        return None
    from gguf import GGUFValueType

    item, count = GGUFValueType(_unpack(f, "<I")), _unpack(f, "<Q")
    if item.name == "STRING" or item.name == "ARRAY":
        for _ in range(count):
            _value(f, item)
    else:
        f.seek(count * struct.calcsize("<" + SCALAR[item.name]), 1)
    return None


def gguf_base(base_id: str | None, base_gguf: str | os.PathLike | None = None) -> GgufBase:
    """The llama.cpp view of the base the adapters were trained on (its config.json, and its GGUF if known)."""
    from zoo.base import DEFAULT_BASE, resolve_base

    ref = resolve_base(base_id or DEFAULT_BASE)
    config = json.loads((ref.path / "config.json").read_text())
    hf_arch = (config.get("architectures") or [None])[0]
    if hf_arch not in ARCHITECTURES:
        raise ZooError(f"the base's architecture {str(hf_arch)[:60]!r} is not one this export writes for llama.cpp "
                       f"({', '.join(ARCHITECTURES)}); convert it with llama.cpp's convert_lora_to_gguf.py instead")
    n_head = int(config["num_attention_heads"])
    base = GgufBase(ARCHITECTURES[hf_arch], int(config["num_hidden_layers"]), n_head,
                    int(config.get("num_key_value_heads") or n_head))
    path = Path(base_gguf).expanduser() if base_gguf else embedded_gguf(ref)
    if base_gguf and not path.is_file():
        raise ZooError(f"--base-gguf {base_gguf}: no such file")
    if path is not None:
        arch, base.shapes = read_base_gguf(path)
        if arch != base.arch:
            raise ZooError(f"{path} is a {arch!r} GGUF, but the adapters' base is {base.arch!r}")
        base.gguf = path.absolute()
    return base


# tensors ----------------------------------------------------------------------------------------------------------
def lora_pairs(adapter_dir: Path) -> dict[str, dict[str, object]]:
    """HF module name (`model.layers.0.self_attn.q_proj`) -> {"A": (r, in), "B": (out, r)} as fp32 numpy."""
    from safetensors.torch import load_file

    from zoo.adapter_config import TENSOR

    pairs: dict[str, dict[str, object]] = {}
    for key, tensor in load_file(adapter_dir / "adapter_model.safetensors", device="cpu").items():
        match = TENSOR.fullmatch(key)
        if match is None or match["part"] == "lora_magnitude_vector":
            raise ZooError(f"{adapter_dir.name}: tensor {key[:80]!r} is no plain LoRA weight; llama.cpp loads "
                           "only lora_A/lora_B pairs (DoRA is not supported there)")
        pairs.setdefault(match["module"], {})[match["part"][-1]] = tensor.float().numpy()
    broken = [m for m, p in pairs.items() if set(p) != {"A", "B"}]
    if broken:
        raise ZooError(f"{adapter_dir.name}: {broken[0][:80]} has lora_A or lora_B but not both")
    return pairs


def permute_rows(weights, n_head: int):
    """llama.cpp's q/k row order (`LlamaModel.permute` in its converter): per head, the two rotary halves
    interleaved."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(base: GgufBase, pairs: dict, outtype: str = "f32") -> dict[str, object]:
    """`blk.N.<name>.weight.lora_a|lora_b` -> array, as llama.cpp's converter names, orders and permutes them."""
    import gguf
    import numpy as np

    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, base.arch.upper()), base.n_layers)
    dtype = np.float16 if outtype == "f16" else np.float32
    out = {}
    for module in sorted(pairs, key=_module_order):
        name = tmap.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise ZooError(f"module {module[:80]!r} has no llama.cpp tensor in the {base.arch!r} architecture")
        a, b = pairs[module]["A"], pairs[module]["B"]
        kind = name.split(".")[-2]
        if kind in PERMUTED:
            b = permute_rows(b, getattr(base, PERMUTED[kind]))
        out[name + ".lora_a"] = np.ascontiguousarray(a, dtype=dtype)
        out[name + ".lora_b"] = np.ascontiguousarray(b, dtype=dtype)
    return out


def _module_order(module: str) -> tuple:
    parts = module.split(".")
    return tuple(int(p) if p.isdigit() else 0 for p in parts), module


def fit_problems(base: GgufBase, tensors: dict) -> list[str]:
    """The checks llama.cpp makes on load (`llama_adapter_lora_init`), made here: every tensor adapts a tensor the
    base GGUF has, with A's columns = the base's input size, B's rows = its output size, one rank for both."""
    if not base.shapes:
        return []
    out = []
    for name, a in tensors.items():
        if not name.endswith(".lora_a"):
            continue
        target, b = name[: -len(".lora_a")], tensors[name[:-1] + "b"]
        ne = base.shapes.get(target)
        if ne is None:
            out.append(f"{target} does not exist in the base GGUF (wrong base?)")
        elif (a.shape[1], b.shape[0]) != tuple(ne[:2]) or a.shape[0] != b.shape[1]:
            out.append(f"{target}: lora_a {list(a.shape)} / lora_b {list(b.shape)} do not fit the base's {list(ne)}")
    return out


def effective_alpha(cfg: dict) -> float:
    """The alpha llama.cpp needs for PEFT's scale: it always scales by alpha / r, PEFT's rsLoRA by alpha / sqrt(r)."""
    alpha = float(cfg["lora_alpha"])
    return alpha * math.sqrt(cfg["r"]) if cfg.get("use_rslora") else alpha


# files --------------------------------------------------------------------------------------------------------------
def write_adapter_gguf(path: Path, base: GgufBase, tensors: dict, alpha: float, name: str, task: str,
                       prompt_prefix: str) -> None:
    """One LoRA adapter GGUF, with the keys llama.cpp reads (type, adapter type, alpha) and the informational
    task name / prompt prefix llama-server lists at /lora-adapters."""
    import gguf

    writer = gguf.GGUFWriter(path, arch=base.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_string(gguf.Keys.Adapter.LORA_TASK_NAME, task)
    writer.add_string(gguf.Keys.Adapter.LORA_PROMPT_PREFIX, prompt_prefix)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_tensors(writer, tensors)


def write_tensors(writer, tensors: dict) -> None:
    """Add `tensors` to a GGUFWriter whose metadata is set, write the file and close it."""
    for tensor_name, data in tensors.items():
        writer.add_tensor(tensor_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_adapter(zoo, name: str, base: GgufBase, dest: Path, outtype: str = "f32", expanded=None) -> dict:
    """Convert one healthy zoo adapter to `dest` (adapters/<name>.gguf) and, given the base read once
    (`gguf_full.expand_base`), fold it into a copy of the base beside it (merged/<name>.gguf); returns what
    routes.json says of it."""
    from tasks import spec_for_adapter

    folder = zoo.adapter_dir(name)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("use_dora"):
        raise ZooError(f"{name}: a DoRA adapter; llama.cpp's LoRA loader has no magnitude vectors")
    tensors = gguf_tensors(base, lora_pairs(folder), outtype)
    bad = fit_problems(base, tensors)
    if bad:
        raise ZooError(f"{name} does not fit the base GGUF: {bad[0]}" + (f" (+{len(bad) - 1} more)" if bad[1:] else ""))
    spec = spec_for_adapter(zoo, name)
    alpha = effective_alpha(cfg)
    write_adapter_gguf(dest, base, tensors, alpha, name, spec.name, spec.templates[0])
    info = {"task": spec.name, "r": int(cfg["r"]), "alpha": alpha, "tensors": len(tensors)}
    if expanded is not None:
        from zoo.export.gguf_full import write_full_gguf

        path = dest.parent.parent / "merged" / dest.name
        write_full_gguf(expanded, path, tensors, alpha / int(cfg["r"]), name=name)
        info["merged"] = f"merged/{path.name}"
    return info


def routes_document(zoo, base: GgufBase, adapters: dict[str, dict]) -> dict:
    """routes.json: each adapter's llama-server lora id (its position in the --lora list) and `logit_bias` if it
    has one, route -> adapter."""
    routes = {}
    if zoo.router_dir.is_dir():  # route -> adapter as the zoo's router maps them (router.api imports scikit-learn)
        from router.api import adapter_map

        routes = {r: n for r, n in adapter_map(zoo).items() if n in adapters}
    for name, info in adapters.items():  # an adapter whose route another adapter won still answers its own task
        routes.setdefault(info["task"], name)
    return {"format": FORMAT, "version": 1, "engine": ENGINE,
            "base": {"gguf": str(base.gguf) if base.gguf else None, "architecture": base.arch},
            "adapters": {n: {**info, "path": f"adapters/{n}.gguf", "lora_id": i, **_bias(zoo, n)}
                         for i, (n, info) in enumerate(adapters.items())},
            "routes": {**dict(sorted(routes.items())), NONE: None}}


def _bias(zoo, name: str) -> dict:
    """An adapter's calibrated decision (`zoo.label_bias`): a request to llama-server sends it as `logit_bias`."""
    bias = zoo.get(name).logit_bias
    return {"logit_bias": bias} if bias else {}


def server_args(routes: dict) -> list[str]:
    """llama-server's adapter arguments (after -m): every adapter loaded, none applied until a request asks.
    Paths are relative to the export folder."""
    paths = [info["path"] for info in sorted(routes["adapters"].values(), key=lambda a: a["lora_id"])]
    # one comma-separated --lora: a repeated flag keeps only its last value in current llama.cpp
    return ["--lora", ",".join(paths), "--lora-init-without-apply"]


def launch_script(routes: dict) -> str:
    base = shlex.quote(routes["base"]["gguf"] or "")
    return f"""#!/usr/bin/env bash
# Serve this export with llama.cpp's llama-server (written by `zoo export gguf`).
# Every adapter is loaded and none applied (--lora-init-without-apply); a request picks its adapter with
#   "lora": [{{"id": ID, "scale": 1.0}}, ...every other id with "scale": 0.0], "cache_prompt": false
# (ids in routes.json; llama-server keeps an unlisted adapter's scale and reuses a prompt cache built under another
# adapter). Or route by content in front of it:
#   zoo serve --upstream http://127.0.0.1:$PORT --upstream-kind llama-server --zoo YOUR_ZOO
# BASE_GGUF (the base model as GGUF), PORT (8080) and LLAMA_SERVER (the binary) can be set. On a VM that reports
# AMX but faults on it (SIGILL while loading), add --no-repack.
set -euo pipefail
BASE_GGUF="${{BASE_GGUF:-{base}}}"
if [ -z "$BASE_GGUF" ]; then echo "set BASE_GGUF to the base model's .gguf" >&2; exit 2; fi
cd "$(dirname "$0")"
exec "${{LLAMA_SERVER:-llama-server}}" -m "$BASE_GGUF" --port "${{PORT:-8080}}" \\
  {" ".join(shlex.quote(a) for a in server_args(routes))} "$@"
"""


def write_export(zoo, names: list[str], base: GgufBase, out: Path, outtype: str, merged: bool = False) -> dict:
    """Write everything into a staging folder, then swap it in: a killed export never leaves half a folder."""
    from tqdm.auto import tqdm

    from zoo.fsutil import atomic_write_json, atomic_write_text, replace_dir
    from zoo.outdir import mark

    staged = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    (staged / "adapters").mkdir(parents=True)
    expanded = None
    if merged:
        from zoo.export.gguf_full import expand_base

        (staged / "merged").mkdir()
        expanded = expand_base(base.gguf, outtype)  # read once for every adapter's merged file
    try:
        adapters = {n: export_adapter(zoo, n, base, staged / "adapters" / f"{n}.gguf", outtype, expanded)
                    for n in tqdm(names, desc="gguf", unit="adapter", disable=len(names) < 2, leave=False)}
        routes = routes_document(zoo, base, adapters)
        atomic_write_json(staged / ROUTES_FILE, routes)
        atomic_write_text(staged / "launch_llama_server.sh", launch_script(routes))
        (staged / "launch_llama_server.sh").chmod(0o755)
        mark(staged, "zoo export gguf")
        replace_dir(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return routes


# the command --------------------------------------------------------------------------------------------------------
def export_gguf(zoo, names: list[str], out, args) -> int:
    """`zoo export gguf`: check, convert, write, say what was written."""
    from zoo.outdir import check_replaceable

    out = Path(out)
    check_replaceable(out, "zoo export gguf", "pick another --out")
    entries = {n: zoo.require_healthy(n) for n in names}
    bases = {e.base.hash or e.base.id for e in entries.values()}
    if len(bases) > 1:
        raise ZooError(f"llama-server serves one base, and these adapters were trained on {len(bases)} bases; "
                       "export each base's adapters separately")
    base = gguf_base(next(iter(entries.values())).base.id, getattr(args, "base_gguf", None))
    merged = bool(getattr(args, "merged", False))
    if merged and base.gguf is None:
        raise ZooError("--merged folds each adapter into the base GGUF, and none is known for this base; "
                       "pass it with --base-gguf")
    routes = write_export(zoo, names, base, out, getattr(args, "outtype", "f32"), merged)
    print(f"[zoo] exported {len(names)} adapter(s) for llama.cpp to {out} (architecture {base.arch}):")
    for name, a in routes["adapters"].items():
        print(f"[zoo]   {a['path']}  lora id {a['lora_id']}  r={a['r']} alpha={a['alpha']:g}  task {a['task']}"
              + (f"  merged: {a['merged']}" if "merged" in a else ""))
    if base.gguf is None:
        print("[zoo]   no base GGUF known for this base: set BASE_GGUF when launching (or export with --base-gguf)")
    print(f"[zoo] then: {out}/launch_llama_server.sh  and  zoo serve --upstream http://127.0.0.1:8080 "
          "--upstream-kind llama-server")
    return 0


__all__ = ["export_gguf", "gguf_base", "gguf_tensors", "lora_pairs", "permute_rows", "routes_document",
           "server_args", "write_adapter_gguf", "GgufBase"]
