"""Adapter vs base on a task's validation split: a fixed, seeded sample, batched greedy generation."""

from __future__ import annotations

import time

from zoo.prompting import task_prompt_ids
from zoo.serving.runtime import NONE, Runtime

DEFAULT_N = 200
EXAMPLES_IN_REPORT = 4
_BASE_CACHE: dict[tuple, dict] = {}


def eval_rows(spec, n: int, data_dir=None, seed: int = 0) -> list[dict]:
    from zoo.data import load_rows

    return load_rows(spec, spec.eval_split, data_dir, limit=n, seed=seed)


def prompt_ids(runtime: Runtime, spec, rows: list[dict]) -> list[list[int]]:
    limit = max(256, spec.train.max_seq_len - spec.max_new_tokens)
    return [task_prompt_ids(runtime.tokenizer, spec, r, 0, limit) for r in rows]


def run_outputs(runtime: Runtime, spec, rows, adapter: str, batch_size: int = 16) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    label = f"{spec.name}: {'base' if adapter == NONE else adapter}"
    outputs = runtime.generate_ids(prompt_ids(runtime, spec, rows), adapter, spec.max_new_tokens, batch_size,
                                   progress=label)
    return outputs, time.perf_counter() - t0


def score_outputs(spec, outputs: list[str], rows: list[dict]) -> dict:
    from zoo.metrics import score

    return score(spec.metric, outputs, [spec.references(r) for r in rows], labels=spec.labels)


def base_scores(runtime: Runtime, spec, rows, key: tuple, batch_size: int = 16) -> tuple[dict, list[str], float]:
    """The base's scores on a sample; cached, since every adapter of a task is compared with the same ones."""
    key = (runtime.loaded.ref.hash, spec.name, *key)
    if key not in _BASE_CACHE:
        outputs, seconds = run_outputs(runtime, spec, rows, NONE, batch_size)
        _BASE_CACHE[key] = {"scores": score_outputs(spec, outputs, rows), "outputs": outputs, "seconds": seconds}
    hit = _BASE_CACHE[key]
    return hit["scores"], hit["outputs"], hit["seconds"]


def evaluate_adapter_on_task(runtime: Runtime, adapter: str, spec, n: int = DEFAULT_N, data_dir=None,
                             seed: int = 0, batch_size: int = 16) -> dict:
    """One adapter's metrics on one task (used to score blends on every task)."""
    rows = eval_rows(spec, n, data_dir, seed)
    outputs, _ = run_outputs(runtime, spec, rows, adapter, batch_size)
    return score_outputs(spec, outputs, rows)


def evaluate(runtime: Runtime, name: str, spec, n: int = DEFAULT_N, data_dir=None, seed: int = 0,
             batch_size: int = 16) -> dict:
    """Base vs adapter `name` on `spec`: metrics, timings and a few side-by-side examples."""
    rows = eval_rows(spec, n, data_dir, seed)
    base, base_out, base_s = base_scores(runtime, spec, rows, (len(rows), seed, spec.eval_split), batch_size)
    outputs, seconds = run_outputs(runtime, spec, rows, name, batch_size)
    examples = [
        {"prompt": spec.prompt(r, 0), "reference": spec.references(r)[0], "base": b, "adapter": a}
        for r, b, a in list(zip(rows, base_out, outputs))[:EXAMPLES_IN_REPORT]
    ]
    return {
        "task": spec.name, "name": name, "n": len(rows), "split": spec.eval_split, "seed": seed,
        "metric": spec.primary_metric, "base": base, "adapter": score_outputs(spec, outputs, rows),
        "seconds": {"base": round(base_s, 1), "adapter": round(seconds, 1)}, "examples": examples,
    }


def summary(result: dict) -> dict:
    """The part of a result that goes into the manifest and `zoo eval --json`."""
    keys = ("task", "name", "n", "split", "seed", "metric", "base", "adapter")
    return {k: result[k] for k in keys if k in result}
