"""Memory plans for a training run: which layers recompute their activations, and dense (and int8) copies of the
NF4 weights.

Backward needs what each trained-through layer computed in forward (~130 MB per SmolLM2 layer for a QA step of
2,500 fp32 tokens: five hidden-sized tensors, four MLP-sized ones, the attention probabilities). A checkpointed
layer keeps only its input and recomputes the rest in backward: ~2% more step time per layer for ~95% less of its
memory. `choose_plan` takes the fastest plan whose estimate fits the budget (`--max-memory`; by default a share
of the machine's RAM, or of a GPU's memory), i.e. the fewest checkpointed layers, the lowest first. Layers below
the lowest LoRA layer keep nothing for backward (no gradient reaches them) and are never counted or checkpointed.

The estimate is what the process holds at the start (the base, the libraries) plus the dense copies plus
`FRAGMENTATION` times the activations kept, plus `STEP_LAYERS` plain layers' worth for the rest of a step (the
layer being recomputed, gradients, the loss): glibc's allocator keeps freed blocks that later tensors do not fit,
so a step's peak resident size is well above the bytes alive at once. Activations count 4 bytes per element
whatever the compute dtype: a bf16 QA step keeps 1634 MiB for backward against 1596 MiB in fp32 (two thirds of
it fp32 tensors: RMSNorm upcasts, the softmax keeps fp32), measured with saved-tensor hooks. `FRAGMENTATION` per
compute dtype is fitted to the six training processes of `make run` and `make run AVX2=1` (session 16,
docs/performance.md): the highest peak / activation ratio of each dtype (bf16 2.42-2.48 and 1.71 for the
checkpointed summarization; fp32 1.15-1.47), so the estimate errs high. On a GPU the caching allocator
fragments differently: the same constants, not fitted there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from dataclasses import dataclass

from zoo.errors import ZooError

# peak resident bytes per activation byte kept, by compute dtype size (fitted, docs/performance.md); a bf16 step
# casts more (fp32 norms and softmax beside bf16 matmuls), and its freed blocks fit later tensors worse
FRAGMENTATION = {4: 1.5, 2: 2.5}
ACTIVATION_BYTES = 4  # bytes a step keeps per activation element, in bf16 as in fp32 (measured, see above)
STEP_LAYERS = 10  # the rest of a step, in plain layers' activations
RAM_SHARE = 0.5  # default budget: this share of the machine's memory
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


@dataclass(frozen=True)
class MemoryPlan:
    """How one run holds activations and weights, and what that should take at its peak."""

    checkpointed: int  # trained-through layers that recompute their activations in backward (the lowest ones)
    trained_layers: int  # layers a gradient flows through (from the lowest LoRA layer up)
    dense_weights: bool  # frozen NF4 weights as dense copies: no dequantizing per call, more memory
    estimate_bytes: int
    budget_bytes: int
    int8_grads: bool = False  # backward's input gradients through int8 copies (zoo.training.int8_grads)

    def describe(self) -> str:
        ckpt = "none" if not self.checkpointed else f"{self.checkpointed} of {self.trained_layers} layers"
        dense = "on" if self.dense_weights else "off"
        int8 = ", input gradients in int8" if self.int8_grads else ""
        return (f"memory plan: activation checkpointing {ckpt}, dense NF4 copies {dense}{int8}"
                f", estimated peak {self.estimate_bytes / 2**30:.1f} GB of a {self.budget_bytes / 2**30:.1f} GB budget")

    def as_dict(self) -> dict:
        return {"checkpointed_layers": self.checkpointed, "trained_layers": self.trained_layers,
                "dense_weights": self.dense_weights, "int8_grads": self.int8_grads,
                "estimate_mb": round(self.estimate_bytes / 2**20), "budget_mb": round(self.budget_bytes / 2**20)}


def parse_size(text: str) -> int:
    """'4GB', '512m', '6.5 GB' -> bytes (powers of 1024); a clear error for anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise ZooError(f"bad memory size {text!r}: use a number with KB, MB or GB (e.g. 4GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_budget(text: str, dtype=None) -> int:
    """`--max-memory`: one size ('5GB') or one per compute dtype ('bf16=5GB,fp32=6GB': fp32 activations take
    twice the bytes, so a budget sized on one dtype does not fit the other) for the torch `dtype` training
    computes in. Without `dtype` every size is only checked; a dtype the text does not name is refused."""
    from zoo.base import DTYPES

    if "=" not in str(text):
        return parse_size(text)
    sizes = {}
    for part in str(text).split(","):
        name, _, size = part.partition("=")
        if name.strip() not in DTYPES or not size:
            raise ZooError(f"bad memory budget {part.strip()!r} in {text!r}: use SIZE or DTYPE=SIZE,... with "
                           f"DTYPE one of {', '.join(DTYPES)} (e.g. bf16=5GB,fp32=6GB)")
        sizes[name.strip()] = parse_size(size)
    if dtype is None:
        return max(sizes.values())
    dtype_name = {v: k for k, v in DTYPES.items()}.get(str(dtype).replace("torch.", ""), str(dtype))
    if dtype_name not in sizes:
        raise ZooError(f"--max-memory {text!r} names no budget for {dtype_name}, the dtype this machine trains in")
    return sizes[dtype_name]


def default_budget(device: str = "cpu") -> int:
    """`RAM_SHARE` of the memory that training fills (what `--max-memory` defaults to): the machine's RAM, or on
    a GPU its own memory."""
    if device.startswith("cuda"):
        import torch

        return int(RAM_SHARE * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return int(RAM_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def held_bytes(device: str = "cpu") -> int:
    """What the device holds before training: a GPU's allocated bytes, or this process's resident memory after
    freed heap pages are handed back (an earlier run in this process, `zoo train --all`, leaves gigabytes that
    the allocator would reuse)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.memory_allocated(torch.device(device))
    release_free_memory()
    return resident_bytes()


def resident_bytes() -> int:
    """This process's resident memory now; its peak so far where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def release_free_memory() -> None:
    """Collect garbage and return glibc's free heap pages to the system (no-op elsewhere)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def peak_rss_bytes() -> int:
    """The highest resident size this process has had (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def layer_activation_bytes(config, tokens: int, attention_cells: int, dtype_bytes: int) -> tuple[int, int]:
    """(kept by a plain layer, kept by a checkpointed one) for one step: five hidden-sized and four MLP-sized
    tensors per token, plus the attention probabilities (`attention_cells` per head), at `ACTIVATION_BYTES`;
    a checkpointed layer keeps its input, in the compute dtype."""
    hidden, inner = config.hidden_size, config.intermediate_size
    plain = (tokens * (5 * hidden + 4 * inner) + config.num_attention_heads * attention_cells) * ACTIVATION_BYTES
    return plain, tokens * hidden * dtype_bytes


def estimate(config, trained_layers: int, checkpointed: int, tokens: int, attention_cells: int,
             dtype_bytes: int, held: int, dense_bytes: int) -> int:
    """Peak resident bytes of a step under one plan (see the module docstring); `held`: bytes held before it."""
    plain, kept = layer_activation_bytes(config, tokens, attention_cells, dtype_bytes)
    live = (trained_layers - checkpointed + STEP_LAYERS) * plain + checkpointed * kept
    return int(held + dense_bytes + FRAGMENTATION.get(dtype_bytes, max(FRAGMENTATION.values())) * live)


def choose_plan(config, trained_layers: int, tokens: int, attention_cells: int, dtype_bytes: int,
                budget: int | None = None, dense_bytes: int = 0, held: int | None = None,
                at_least: int = 0, device: str = "cpu", int8_bytes: int = 0) -> MemoryPlan:
    """The fastest plan whose estimate fits `budget`: the fewest checkpointed layers (`at_least` of them), then
    dense copies of the NF4 weights if they fit too (they never cost a checkpointed layer), then int8 copies
    of them for backward (`int8_bytes`; 0: not available). Over budget even fully checkpointed: a clear error
    naming what to change."""
    budget = default_budget(device) if budget is None else budget
    held = held_bytes(device) if held is None else held
    cost = functools.partial(estimate, config, trained_layers, tokens=tokens, attention_cells=attention_cells,
                             dtype_bytes=dtype_bytes, held=held)
    k = next((k for k in range(min(at_least, trained_layers), trained_layers + 1)
              if cost(k, dense_bytes=0) <= budget), None)
    if k is None:
        raise ZooError(f"training needs about {cost(trained_layers, dense_bytes=0) / 2**30:.1f} GB even with every "
                       f"layer checkpointed, over the {budget / 2**30:.1f} GB memory budget: raise --max-memory, "
                       "or lower --batch-size, --row-tokens or --max-seq-len")
    dense = bool(dense_bytes) and cost(k, dense_bytes=dense_bytes) <= budget
    copies = dense_bytes if dense else 0
    int8 = bool(int8_bytes) and cost(k, dense_bytes=copies + int8_bytes) <= budget
    copies += int8_bytes if int8 else 0
    return MemoryPlan(k, trained_layers, dense, cost(k, dense_bytes=copies), budget, int8)


@contextlib.contextmanager
def applied(model, plan: MemoryPlan):
    """`plan` on `model` (its decoder layers, its NF4 layers) for the block; the model as it was afterwards."""
    import torch.utils.checkpoint as ckpt

    from zoo.serving import dense
    from zoo.training import int8_grads

    layers = list(model.get_decoder().layers)
    first = len(layers) - plan.trained_layers
    chosen = layers[first:first + plan.checkpointed]
    func = functools.partial(ckpt.checkpoint, use_reentrant=False)
    for layer in chosen:
        layer.gradient_checkpointing, layer._gradient_checkpointing_func = True, func
    undo_dense = dense.use_dense_for_training(model) if plan.dense_weights else (lambda: None)
    undo_int8 = int8_grads.use_int8_grads(model) if plan.int8_grads else (lambda: None)  # over the dense forward
    try:
        yield plan
    finally:
        for layer in chosen:
            layer.gradient_checkpointing = False
        undo_int8()
        undo_dense()
