"""llama.cpp (base Q4_1 GGUF + exported adapter) vs PEFT with the same adapter, on the same prompt token ids.

Two PEFT references: the adapter on the base weights llama.cpp itself holds (the GGUF's dequantized Q4_1 weights,
unquantized, fp32: what the export must reproduce; the 95% bar applies here), and the adapter on the runtime's NF4
base it was trained on (what changes when the base is quantized differently: reported). For each: top-1 agreement
on the first answer token, identical greedy answers, task scores. Used by `zoo.export.llama_check`; llama.cpp runs
in `zoo.export.llama_worker` in the llama venv.

Near-ties: llama.cpp multiplies Q4_1 weights with activations rounded to 8 bits, so it computes the margin between
two tokens' logits with an error. That error is measured on the plain base (no adapter, so no export in it): on the
same prompts, llama.cpp's margin between PEFT's two best tokens against PEFT's own. A first-token miss where PEFT's
lead is within the 95th percentile of those errors (`tie_bound`) is a tie that rounding decides, not an export
error; the bar counts the other misses."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from zoo.errors import ZooError
from zoo.serving.runtime import NONE

# the share of llama.cpp's measured margin errors on the base that a "tie" may be within
TIE_QUANTILE = 0.95
WORKER = Path(__file__).with_name("llama_worker.py")


@dataclass
class Parity:
    """One adapter's comparison (shares are in [0, 1])."""

    adapter: str
    task: str
    n: int
    top1: float  # first answer token: llama.cpp + adapter == PEFT adapter on the same (dequantized Q4_1) weights
    same_answers: float  # whole greedy answers identical (decoded text), same reference
    top1_nf4: float  # llama.cpp + adapter == PEFT adapter on the NF4 base (the runtime's)
    same_answers_nf4: float
    control_top1: float  # llama.cpp WITHOUT the adapter == PEFT adapter (same weights): what agreement owes to it
    miss_gaps: list[float]  # per first-token miss (same weights): PEFT's logit of its token minus of llama.cpp's
    metric: str
    score_peft: float  # PEFT on the same weights
    score_nf4: float
    score_llama: float
    seconds_peft: float
    seconds_llama: float
    top1_f32: float = float("nan")  # llama.cpp on the base GGUF expanded to f32 (no 8-bit activations) + adapter
    same_answers_f32: float = float("nan")
    base_top1: float = float("nan")  # llama.cpp base == PEFT base (both without adapter), first token
    tie_bound: float = float("nan")  # 95th percentile of llama.cpp's margin errors on the base (logits)
    adapter_margin_error: float = float("nan")  # the same percentile with the adapter (reported, not used)
    top1_outside_ties: float = float("nan")  # agreement counting misses within tie_bound as ties: the bar

    def to_json(self) -> dict:
        return asdict(self)


def llama_run(python: Path, model: Path, lora: Path | None, prompts: list[list[int]], new_tokens: int,
              eos: list[int], candidates: list[list[int]] | None = None, timeout: float = 1800,
              logit_bias: dict | None = None) -> dict:
    """llama.cpp on each prompt (a worker process in the llama venv): greedy answer token ids, the first step's
    logits of each prompt's `candidates`, seconds; `logit_bias` (an adapter's calibrated decision) added to every
    step's logits, as the zoo's serving adds it."""
    wanted = candidates or [[] for _ in prompts]
    job = {"model": str(model), "lora": str(lora) if lora else None, "threads": os.cpu_count() or 2, "eos": eos,
           "logit_bias": logit_bias or {},
           "jobs": [{"ids": ids, "max_new_tokens": new_tokens, "candidates": c} for ids, c in zip(prompts, wanted)]}
    done = subprocess.run([str(python), str(WORKER)], input=json.dumps(job), capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode:
        raise ZooError(f"llama.cpp worker failed: {done.stderr.strip()[-600:]}")
    return json.loads(done.stdout)


def llama_answers(python: Path, model: Path, lora: Path | None, prompts: list[list[int]], new_tokens: int,
                  eos: list[int], logit_bias: dict | None = None) -> tuple[list[list[int]], float]:
    """Greedy answer token ids from llama.cpp for each prompt, and the seconds they took."""
    result = llama_run(python, model, lora, prompts, new_tokens, eos, logit_bias=logit_bias)
    return result["answers"], result["seconds"]


def peft_first_logits(runtime, name: str, prompts: list[list[int]]) -> list:
    """The next-token logits after each prompt with the adapter `name` active, or the plain base for `NONE`
    (one prompt per forward: no padding), with the adapter's calibrated logit bias as its answers get it."""
    import torch

    from zoo.label_bias import add_bias

    def first(model, extra, ids):
        logits = model(input_ids=torch.tensor([ids], device=runtime.loaded.device)).logits[:, -1].float().cpu()
        return add_bias(logits, [name], runtime.logit_biases)[0]

    if name != NONE:
        runtime.load_adapter(name)
    with runtime.lock, torch.inference_mode():
        return [runtime.with_adapters([name], lambda m, e, ids=ids: first(m, e, ids)) for ids in prompts]


def peft_side(runtime, name: str, spec, prompts: list[list[int]]) -> dict:
    """The PEFT adapter's first tokens and greedy answers on one runtime (one base), with the time taken."""
    t0 = time.perf_counter()
    logits = peft_first_logits(runtime, name, prompts)
    answers = runtime.generate_ids(prompts, name, spec.max_new_tokens, batch_size=8, progress=f"{name}: PEFT")
    return {"first": [int(x.argmax()) for x in logits], "logits": logits, "answers": answers,
            "seconds": time.perf_counter() - t0}


def share_first_agree(firsts: list[int], llama_answers: list[list[int]]) -> float:
    """The share of prompts whose llama.cpp answer starts with the given first token."""
    return sum(bool(a) and a[0] == f for a, f in zip(llama_answers, firsts)) / len(llama_answers)


def _misses(side: dict, llama_answers: list[list[int]]) -> list[float | None]:
    """Per first-token miss: PEFT's logit lead of its own token over llama.cpp's (None: llama.cpp answered
    nothing)."""
    return [None if not a else float(row[f] - row[a[0]])
            for row, f, a in zip(side["logits"], side["first"], llama_answers) if not a or a[0] != f]


def miss_gaps(side: dict, llama_answers: list[list[int]]) -> list[float]:
    """For each prompt whose first token differs: how far ahead PEFT's token was of llama.cpp's, in logits. Small
    gaps are near-ties that any rounding of the activations can flip, not a wrong adapter."""
    return [round(g, 4) for g in _misses(side, llama_answers) if g is not None]


def top_two(logits: list) -> list[list[int]]:
    """Each row's two highest-scoring token ids, best first."""
    return [[int(i) for i in row.topk(2).indices] for row in logits]


def margin_errors(logits: list, pairs: list[list[int]], llama_pairs: list[list[float]]) -> list[float]:
    """Per prompt: |llama.cpp's logit margin between the pair's two tokens - PEFT's margin between them|."""
    return [abs((theirs[0] - theirs[1]) - float(row[a] - row[b]))
            for row, (a, b), theirs in zip(logits, pairs, llama_pairs)]


def quantile(values: list[float], q: float = TIE_QUANTILE) -> float:
    """The q-quantile (linear interpolation between order statistics), nan for no values."""
    import numpy as np

    return float(np.quantile(values, q)) if values else float("nan")


def share_outside_ties(side: dict, llama_answers: list[list[int]], bound: float) -> float:
    """The share of prompts whose first token agrees, counting a miss as agreement when PEFT's lead of its own
    token over llama.cpp's is within `bound` (a tie rounding decides); an empty answer is a miss."""
    misses = sum(1 for lead in _misses(side, llama_answers) if lead is None or not lead <= bound)
    return 1 - misses / len(llama_answers)


def base_noise(same, python: Path, base: Path, prompts: list[list[int]], eos: list[int]) -> dict:
    """llama.cpp's base (no adapter) against PEFT's base on the same weights: its first tokens (the control), its
    top-1 agreement and the tie bound from its margin errors."""
    logits = peft_first_logits(same, NONE, prompts)
    pairs = top_two(logits)
    run = llama_run(python, base, None, prompts, 1, eos, candidates=pairs)
    errors = margin_errors(logits, pairs, run["first_logits"])
    return {"answers": run["answers"], "top1": share_first_agree([p[0] for p in pairs], run["answers"]),
            "bound": quantile(errors)}


def compare_adapter(same, nf4, python: Path, export_dir: Path, name: str, n: int, data_dir=None,
                    expanded: Path | None = None) -> Parity:
    """One exported adapter on `n` validation rows of its task (the eval sample): llama.cpp against the PEFT
    adapter on `same` (a runtime on the GGUF's weights) and on `nf4` (the NF4 runtime); with `expanded` (the base
    GGUF in f32), llama.cpp on it too, which separates the export from llama.cpp's 8-bit activations."""
    from tasks import spec_for_adapter
    from zoo.evaluation import eval_rows, prompt_ids, score_outputs

    routes = json.loads((export_dir / "routes.json").read_text())
    spec = spec_for_adapter(same.zoo, name)
    rows = eval_rows(spec, n, data_dir)
    prompts = prompt_ids(same, spec, rows)
    ref, quantized = peft_side(same, name, spec, prompts), peft_side(nf4, name, spec, prompts)
    tok = same.tokenizer
    base, lora = Path(routes["base"]["gguf"]), export_dir / routes["adapters"][name]["path"]
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    pairs, bias = top_two(ref["logits"]), same.logit_biases.get(name)
    run = llama_run(python, base, lora, prompts, spec.max_new_tokens, eos, candidates=pairs, logit_bias=bias)
    answers, noise = run["answers"], base_noise(same, python, base, prompts, eos)
    in_f32 = llama_answers(python, expanded, lora, prompts, spec.max_new_tokens, eos, bias)[0] if expanded else None
    decoded = lambda ids: [tok.decode(a, skip_special_tokens=True) for a in ids]  # noqa: E731
    llama = decoded(answers)
    share = lambda hits: sum(hits) / len(rows)  # noqa: E731
    same_text = lambda texts, other=llama: share([x.strip() == y.strip()  # noqa: E731
                                                  for x, y in zip(texts, other)])
    score = lambda texts: float(score_outputs(spec, texts, rows)[spec.primary_metric])  # noqa: E731
    return Parity(
        name, spec.name, len(rows), top1=share_first_agree(ref["first"], answers),
        same_answers=same_text(ref["answers"]), top1_nf4=share_first_agree(quantized["first"], answers),
        same_answers_nf4=same_text(quantized["answers"]),
        control_top1=share_first_agree(ref["first"], noise["answers"]), miss_gaps=miss_gaps(ref, answers),
        metric=spec.primary_metric, score_peft=score(ref["answers"]), score_nf4=score(quantized["answers"]),
        score_llama=score(llama), seconds_peft=ref["seconds"], seconds_llama=run["seconds"],
        **({"top1_f32": share_first_agree(ref["first"], in_f32),
            "same_answers_f32": same_text(ref["answers"], decoded(in_f32))} if in_f32 else {}),
        base_top1=noise["top1"], tie_bound=noise["bound"],
        adapter_margin_error=quantile(margin_errors(ref["logits"], pairs, run["first_logits"])),
        top1_outside_ties=share_outside_ties(ref, answers, noise["bound"]))


def compare_zoo(zoo, export_dir: Path, python: Path, n: int, data_dir=None) -> list[Parity]:
    """Every exported adapter; the same-weights runtime is the zoo's base unquantized in fp32 (the safetensors
    the embedded base was converted to are the GGUF's Q4_1 weights dequantized), and llama.cpp also runs on the
    base GGUF expanded to f32 (`base-f32.gguf`, written into the export folder)."""
    from zoo.export.gguf_full import expand_base, write_full_gguf
    from zoo.serving.runtime import Runtime

    routes = json.loads((export_dir / "routes.json").read_text())
    expanded = export_dir / "base-f32.gguf"
    write_full_gguf(expand_base(Path(routes["base"]["gguf"]), "f32"), expanded)
    with Runtime(zoo, quant=False, dtype="fp32") as same, Runtime(zoo) as nf4:
        return [compare_adapter(same, nf4, python, export_dir, name, n, data_dir, expanded)
                for name in routes["adapters"]]


# the report ----------------------------------------------------------------------------------------------------------
def table(results: list[Parity]) -> str:
    lines = ["| adapter (task) | n | top-1 first token (same weights) | top-1, misses within the tie bound "
             "excused (the bar) | tie bound: base / with adapter (logits) | base alone: llama.cpp vs PEFT top-1 | "
             "same greedy answer | llama.cpp on the f32 base: top-1 / same answer | top-1 vs NF4 runtime | "
             "same answer vs NF4 | control: without adapter | first-token misses: PEFT's logit lead | "
             "score PEFT / PEFT NF4 / llama.cpp | seconds PEFT / llama.cpp |", "|---" * 14 + "|"]
    for r in results:
        lines.append(f"| {r.adapter} ({r.task}) | {r.n} | {r.top1:.1%} | {r.top1_outside_ties:.1%} | "
                     f"{r.tie_bound:.3f} / {r.adapter_margin_error:.3f} | {r.base_top1:.1%} | "
                     f"{r.same_answers:.1%} | {r.top1_f32:.1%} / {r.same_answers_f32:.1%} | {r.top1_nf4:.1%} | "
                     f"{r.same_answers_nf4:.1%} | {r.control_top1:.1%} | {_gaps(r.miss_gaps)} | "
                     f"{r.metric} {r.score_peft:.3g} / {r.score_nf4:.3g} / {r.score_llama:.3g} | "
                     f"{r.seconds_peft:.1f} / {r.seconds_llama:.1f} |")
    return "\n".join(lines)


def _gaps(gaps: list[float]) -> str:
    return ", ".join(f"{g:.3f}" for g in sorted(gaps)) if gaps else "none"


def write_docs(docs: Path, results: list[Parity], context: dict, begin: str, end: str) -> None:
    """Replace the block between the markers in docs/llamacpp.md (the prose around it stays as written)."""
    from zoo.fsutil import atomic_write_text

    facts = "; ".join(f"{k}: {v}" for k, v in context.items())
    block = f"{begin}\n{table(results)}\n\n{facts}\n{end}"
    text = docs.read_text() if docs.is_file() else "# llama.cpp\n\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(docs, text)
