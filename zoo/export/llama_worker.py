"""Greedy answers from llama.cpp itself (llama-cpp-python), for `zoo.export.llama_check`.

Runs as a script in the llama venv (`.venv-llama`: llama-cpp-python and numpy, not this project), in its own
process: ggml's OpenMP runtime never shares a process with torch's. Reads a JSON job on stdin, prints one JSON
result: per prompt the greedy answer's token ids (the first is the top-1 next token), computed on the same prompt
token ids the PEFT side used, so tokenizers and chat templates cannot differ, and llama.cpp's first-step logits
of the job's `candidates` (token ids; the check compares logit margins with PEFT's).

    {"model": BASE.gguf, "lora": ADAPTER.gguf | null, "n_ctx": 2048, "threads": 2, "logit_bias": {"id": value},
     "jobs": [{"ids": [...], "max_new_tokens": 8, "candidates": [ids]}, ...]}
      ->  {"answers": [[...], ...], "first_logits": [[...], ...], "seconds": 1.2}
"""

from __future__ import annotations

import json
import sys
import time


def greedy(llm, ids: list[int], max_new_tokens: int, eos: set[int], candidates=(),
           logit_bias=None) -> tuple[list[int], list]:
    """Argmax decoding from the logits llama.cpp computes for the last position, one token at a time, with
    `logit_bias` ({"token id": value}) added at every step; also the first step's logits of `candidates`."""
    import llama_cpp
    import numpy as np

    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    first: list[float] = []
    for step in range(max_new_tokens):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
        for token, value in (logit_bias or {}).items():
            logits[int(token)] += value
        if step == 0:
            first = [float(logits[int(c)]) for c in candidates]
        token = int(np.argmax(logits))
        out.append(token)
        if token in eos:
            break
        llm.eval([token])
    return out, first


def no_extra_buffer_types() -> None:
    """Keep weights in plain CPU buffers: a native build on a CPU that advertises AMX compiles ggml's AMX matmul,
    and on this project's VMs that advertise AMX but do not run it, it dies of SIGILL (the extra buffer types are
    also where ggml repacks weights; without them llama.cpp uses its ordinary kernels)."""
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params
    if getattr(default, "zoo_patched", False):
        return

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    params.zoo_patched = True
    low.llama_model_default_params = params


def run(job: dict) -> dict:
    from llama_cpp import Llama

    no_extra_buffer_types()

    llm = Llama(model_path=job["model"], lora_path=job.get("lora"), n_ctx=int(job.get("n_ctx", 2048)),
                n_threads=int(job.get("threads", 2)), n_batch=512, verbose=False)
    eos = {llm.token_eos(), *job.get("eos", [])}
    t0 = time.perf_counter()
    bias = job.get("logit_bias") or {}
    runs = [greedy(llm, j["ids"], int(j["max_new_tokens"]), eos, j.get("candidates", ()), bias) for j in job["jobs"]]
    seconds = time.perf_counter() - t0
    llm.close()
    return {"answers": [a for a, _ in runs], "first_logits": [f for _, f in runs], "seconds": seconds}


def serve(config: str) -> None:
    """`llama_worker.py --serve CONFIG`: llama-cpp-python's OpenAI server (`python -m llama_cpp.server
    --config_file CONFIG`) with the same buffer choice as `run`."""
    import runpy

    no_extra_buffer_types()
    sys.argv = ["llama_cpp.server", "--config_file", config]
    runpy.run_module("llama_cpp.server", run_name="__main__")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        json.dump(run(json.load(sys.stdin)), sys.stdout)
