"""Merging an adapter into a standalone model: W' = W + scale * B @ A, computed on a full-precision base.

The delta of a LoRA adapter is small next to the base weights; added to NF4 weights it would be rounded away
(the 4-bit grid is far coarser than the delta), so the base is always loaded in fp32 from its safetensors, the
adapter is merged there (`merge_and_unload`), and only then is the result cast to the requested dtype and,
optionally, quantized to NF4 from the merged full-precision weights.

Every merge checks itself: the merged model's logits on a few prompts must match the adapter applied to the
same fp32 base, and the saved folder, reloaded with plain `AutoModelForCausalLM` (no PEFT), must match the
in-memory model it was saved from. The adapter's task spec (`task.json`) travels into the merged folder.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zoo.base import DTYPES
from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json, replace_dir
from zoo.outdir import check_replaceable, mark

QUANTIZE = ("nf4",)
NF4_DIR = "nf4"
# Max |logit difference| allowed between the merged fp32 model and the adapter on the fp32 base, relative to the
# largest logit: fp32 sums in a different order give ~1e-6; a wrong scale or a dropped module gives >1e-2.
MERGE_RTOL = 1e-4
# A reloaded folder must reproduce the in-memory model it was saved from (same weights, same kernels).
RELOAD_RTOL = 1e-5
GREEDY_TOKENS = 32  # answer tokens compared between the merged model and the adapter
CHECK_PROMPTS = (
    "Review: a gripping, beautifully acted film. Is the sentiment positive or negative?",
    "Context: The Eiffel Tower is in Paris. Question: Where is the Eiffel Tower?",
    "Summarize: #Person1# wants to book a table for two at seven. #Person2# says the restaurant is full.",
)


@dataclass
class MergeResult:
    """What `merge_adapter` wrote and how closely each artifact reproduces the adapter."""

    adapter: str
    out: Path
    dtype: str
    max_diff: float = field(metadata={"help": "merged fp32 vs adapter on the fp32 base (max |logit diff|)"})
    tolerance: float = field(metadata={"help": "the bound max_diff had to stay under"})
    saved_diff: float = field(metadata={"help": "the saved folder reloaded without PEFT vs the in-memory model"})
    dtype_diff: float = field(metadata={"help": "saved dtype vs fp32 reference: rounding of the cast alone"})
    greedy_same: str = field(default="", metadata={"help": "check prompts whose greedy answers are token-identical"})
    nf4: dict | None = None

    def to_json(self) -> dict:
        return {**asdict(self), "out": str(self.out)}


# ---- inputs -------------------------------------------------------------------------------------------------
def check_out(out: Path, force: bool) -> None:
    """An existing output folder is never overwritten by accident, and `--force` replaces only a folder an
    earlier `zoo merge` (or push) wrote (`zoo.outdir`): never `~/Documents` or a folder of the user's."""
    if (out.exists() or out.is_symlink()) and not force:
        raise ZooError(f"output folder {out} already exists; pick another --out or pass --force to replace it")
    check_replaceable(out, "--force")


def check_not_inside(out: Path, keep: dict[str, Path]) -> None:
    """--force replaces `out`: never let that be (or contain) the zoo or the base it merges from."""
    for what, path in keep.items():
        path = Path(path).resolve()
        if path == out.resolve() or out.resolve() in path.parents:
            raise ZooError(f"--out {out} would replace {what} ({path}); pick a separate folder")


def adapter_and_base(zoo, name: str, base: str | None = None):
    """The manifest entry and the base to merge into (default: the one it was trained on); refuses damaged
    adapters and foreign bases."""
    from zoo.base import resolve_base

    base = base or zoo.get(name).base.id
    if not base:
        raise ZooError(f"adapter {name!r} does not record its base; pass --base")
    ref = resolve_base(base)
    return zoo.require_healthy(name, ref), ref


# ---- model pieces -------------------------------------------------------------------------------------------
def load_fp32(path: Path):
    """The base in fp32 on the CPU, freshly loaded: merging edits weights in place, so never the shared copy."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 135M model loads in seconds: no bar on stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    return model.eval()


def check_ids(tokenizer) -> list[list[int]]:
    from zoo.prompting import chat_ids

    return [chat_ids(tokenizer, p) for p in CHECK_PROMPTS]


def logits(model, ids: list[list[int]]):
    """Logits of each check prompt, one prompt at a time (no padding to get wrong), as fp32 on the CPU."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([x], device=device)).logits[0].float().cpu() for x in ids]


def greedy(model, ids: list[list[int]], new_tokens: int = GREEDY_TOKENS) -> list[list[int]]:
    """Greedy answer tokens for each check prompt (one at a time, no padding)."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in ids:
            gen = model.generate(input_ids=torch.tensor([x], device=device), max_new_tokens=new_tokens,
                                 do_sample=False, attention_mask=torch.ones(1, len(x), dtype=torch.long,
                                                                            device=device))
            out.append(gen[0, len(x):].tolist())
    return out


def max_diff(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def top1_agreement(a: list, b: list) -> float:
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b))
    return same / sum(x.shape[0] for x in a)


def scale(ref: list) -> float:
    return max(1.0, max(float(x.abs().max()) for x in ref))


def cast_parameters(model, dtype) -> None:
    """Cast weights only: `model.to(dtype)` would also round buffers such as the rotary `inv_freq`, which
    transformers keeps in fp32 when it loads a bf16/fp16 checkpoint, so the saved model would not be the one
    that was checked."""
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    model.config.dtype = dtype


# ---- the merge ----------------------------------------------------------------------------------------------
def merge_in_memory(adapter_dir: Path, ref, ids: list[list[int]]):
    """Merge in fp32; return the merged model, the adapter-on-base reference logits and the max difference."""
    from peft import PeftModel

    base = load_fp32(ref.path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    peft_model.eval()
    reference, reference_answers = logits(peft_model, ids), greedy(peft_model, ids)
    merged = peft_model.merge_and_unload(safe_merge=True)  # safe_merge: refuse NaN/inf weights
    merged_logits = logits(merged, ids)
    diff = max_diff(merged_logits, reference)
    tol = MERGE_RTOL * scale(reference)
    if diff > tol:
        raise ZooError(f"merge check failed: merged logits differ from the adapter's by {diff:.3g} (> {tol:.3g}); "
                       "the adapter may use a feature merge_and_unload cannot fold in — serve it unmerged")
    same = sum(a == b for a, b in zip(greedy(merged, ids), reference_answers))
    return merged, reference, diff, tol, f"{same}/{len(ids)}"


def save_checked(model, tokenizer, folder: Path, ids, what: str, **load_kwargs) -> tuple[list, float]:
    """Save, reload with plain transformers (no PEFT), and require the reload to reproduce the model."""
    from transformers import AutoModelForCausalLM

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # after saving: bitsandbytes' CPU kernels repack NF4 weights on first use and unpack them to save
    expected = logits(model, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = AutoModelForCausalLM.from_pretrained(folder, **load_kwargs).eval()
    got = logits(reloaded, ids)
    diff = max_diff(got, expected)
    if diff > RELOAD_RTOL * scale(expected):
        raise ZooError(f"the saved {what} model does not reload to the same logits (max diff {diff:.3g}); "
                       f"check free disk space and retry")
    del reloaded
    return got, diff


def quantize_nf4(folder: Path, target: Path, tokenizer, ids, compute_dtype) -> list:
    """NF4 from the merged full-precision weights (never the other way round), saved and reloaded."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from zoo.base import pick_device

    device = pick_device()
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config,
                                                         device_map={"": device}).eval()
        except ImportError as e:
            raise ZooError(f"--quantize nf4 needs bitsandbytes ({e}); install it or drop --quantize") from None
    got, _ = save_checked(model, tokenizer, target, ids, "NF4", device_map={"": device})
    return got


def merge_adapter(zoo, name: str, out: str | os.PathLike, dtype: str = "fp32", quantize: str | None = None,
                  force: bool = False, base: str | None = None) -> MergeResult:
    """Write adapter `name` merged into its base as a standalone model folder `out` (staged, then renamed)."""
    if dtype not in DTYPES:
        raise ZooError(f"unknown --dtype {dtype!r}; use {', '.join(DTYPES)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ZooError(f"unknown --quantize {quantize!r}; use {', '.join(QUANTIZE)}")
    out = Path(out).expanduser().absolute()
    check_out(out, force)
    entry, ref = adapter_and_base(zoo, name, base)
    check_not_inside(out, {"the zoo": zoo.root, "the base model": ref.path})
    staged = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        result = _write_merged(zoo, name, entry, ref, staged, dtype, quantize)
        mark(staged, "zoo merge")
        check_out(out, force)  # again: it may have appeared (or filled up) while we worked
        replace_dir(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    result.out = out
    return result


def _write_merged(zoo, name, entry, ref, staged: Path, dtype: str, quantize: str | None) -> MergeResult:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    ids = check_ids(tokenizer)
    merged, reference, diff, tol, greedy_same = merge_in_memory(zoo.adapter_dir(name), ref, ids)
    torch_dtype = getattr(torch, DTYPES[dtype])
    cast_parameters(merged, torch_dtype)
    if entry.logit_bias:  # the calibrated decision (zoo.label_bias), which transformers' generate then applies
        merged.generation_config.sequence_bias = [[[int(t)], float(v)] for t, v in entry.logit_bias.items()]
    saved, reload_diff = save_checked(merged, tokenizer, staged, ids, dtype, dtype=torch_dtype)
    result = MergeResult(name, staged, dtype, diff, tol, reload_diff, max_diff(saved, reference), greedy_same)
    del merged
    if quantize == "nf4":
        compute = torch.float32 if dtype == "fp32" else torch_dtype
        got = quantize_nf4(staged, staged / NF4_DIR, tokenizer, ids, compute)
        result.nf4 = {"path": NF4_DIR, "max_diff": max_diff(got, reference),
                      "top1_agreement": round(top1_agreement(got, reference), 4)}
    write_record(zoo, entry, ref, staged, result)
    return result


def write_record(zoo, entry, ref, folder: Path, result: MergeResult) -> None:
    """`zoo_merge.json` (what was merged, into what, and the checks) and the adapter's task spec."""
    from tasks import save_spec, spec_for_adapter

    spec = spec_for_adapter(zoo, entry.name)
    save_spec(folder, spec)
    atomic_write_json(folder / "zoo_merge.json", {
        "adapter": entry.name, "task": spec.name, "kind": entry.kind,
        "base": {"id": ref.id, "hash": ref.hash}, "lora": entry.lora,
        "parents": list(entry.blend.parents) if entry.blend else None,
        "checks": {k: v for k, v in result.to_json().items() if k not in ("out", "adapter")},
    })
