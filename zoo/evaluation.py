"""Adapter vs base on a task's validation split and its out-of-domain set: fixed, seeded samples, batched greedy
generation, every score with a 95% bootstrap interval (`zoo.bootstrap`; paired for the change)."""

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


def run_outputs(runtime: Runtime, spec, ids: list[list[int]], adapter: str,
                batch_size: int | None = None) -> tuple[list[str], float]:
    """One system's greedy answers to prompts already tokenized (`prompt_ids`) and their generation seconds."""
    t0 = time.perf_counter()
    label = f"{spec.name}: {'base' if adapter == NONE else adapter}"
    outputs = runtime.generate_ids(ids, adapter, spec.max_new_tokens, batch_size, progress=label)
    return outputs, time.perf_counter() - t0


def score_outputs(spec, outputs: list[str], rows: list[dict]) -> dict:
    from zoo.metrics import score

    return score(spec.metric, outputs, [spec.references(r) for r in rows], labels=spec.labels)


def scored_run(runtime: Runtime, spec, rows, adapter: str, batch_size: int | None = None,
               ids: list[list[int]] | None = None) -> dict:
    """One system's answers on a sample: outputs, time, scores and the per-example scores behind the intervals.
    `ids` are `rows`' prompts when the caller has tokenized them already."""
    ids = prompt_ids(runtime, spec, rows) if ids is None else ids
    outputs, seconds = run_outputs(runtime, spec, ids, adapter, batch_size)
    return {**score_answers(spec, outputs, rows), "seconds": seconds}


def score_answers(spec, outputs: list[str], rows: list[dict]) -> dict:
    from zoo.metrics import example_scores

    references = [spec.references(r) for r in rows]
    return {"outputs": outputs, "scores": score_outputs(spec, outputs, rows),
            "examples": example_scores(spec.metric, outputs, references, labels=spec.labels)}


def base_run(runtime: Runtime, spec, rows, ids: list[list[int]], batch_size: int | None = None) -> dict:
    """The base's run on a sample, kept: every adapter of a task is compared with the same one, and a later
    `zoo eval` on the same base, prompts and settings reads the answers back from the zoo's cache instead of
    generating them again (they are re-scored each time, so a metric's fix applies to them). `ids` are `rows`'
    prompts (`prompt_ids`), which the answers are keyed by."""
    key = answers_key(runtime, spec, ids)
    if key not in _BASE_CACHE:
        kept = read_kept_answers(runtime.zoo, key, len(rows))
        if kept is None:
            _BASE_CACHE[key] = scored_run(runtime, spec, rows, NONE, batch_size, ids=ids)
            keep_answers(runtime.zoo, key, _BASE_CACHE[key])
        else:
            _BASE_CACHE[key] = {**score_answers(spec, kept["outputs"], rows), "seconds": kept["seconds"],
                                "kept": True}
    return _BASE_CACHE[key]


def answers_key(runtime: Runtime, spec, ids: list[list[int]]) -> str:
    """What the base's greedy answers depend on: base weights and how they are computed, prompts, answer length."""
    import hashlib
    import json

    import torch

    loaded = runtime.loaded
    facts = [loaded.ref.hash, loaded.quantized, str(loaded.compute_dtype), loaded.device, torch.__version__,
             spec.max_new_tokens, ids]
    return hashlib.sha256(json.dumps(facts, separators=(",", ":")).encode()).hexdigest()[:32]


def read_kept_answers(zoo, key: str, n: int) -> dict | None:
    """Answers an earlier run kept, if whole (anything else is ignored and generated again)."""
    import json

    try:
        kept = json.loads((zoo.root / ".cache" / "base-answers" / f"{key}.json").read_text())
        outputs, seconds = kept["outputs"], float(kept["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(outputs, list) and len(outputs) == n and all(isinstance(o, str) for o in outputs)):
        return None
    return {"outputs": outputs, "seconds": seconds}


def keep_answers(zoo, key: str, run: dict) -> None:
    from zoo.fsutil import atomic_write_json

    try:
        atomic_write_json(zoo.root / ".cache" / "base-answers" / f"{key}.json",
                          {"outputs": run["outputs"], "seconds": run["seconds"]})
    except OSError:  # a read-only zoo: the answers are only kept in this process
        pass


def compare(runtime: Runtime, name: str, spec, rows, seed: int, batch_size: int | None = None):
    """Base vs adapter on the rows drawn with `seed`: (scores with their 95% intervals, paired for the change;
    base run; adapter run). The resamples are seeded with the same seed."""
    from zoo.bootstrap import paired_intervals

    ids = prompt_ids(runtime, spec, rows)
    base = base_run(runtime, spec, rows, ids, batch_size)
    adapter = scored_run(runtime, spec, rows, name, batch_size, ids=ids)
    scores = {"n": len(rows), "base": base["scores"], "adapter": adapter["scores"],
              "intervals": paired_intervals(base["examples"], adapter["examples"], seed=seed)}
    return scores, base, adapter


def evaluate_adapter_on_task(runtime: Runtime, adapter: str, spec, n: int = DEFAULT_N, data_dir=None,
                             seed: int = 0, batch_size: int | None = None) -> dict:
    """One adapter's metrics on one task (used to score blends on every task)."""
    rows = eval_rows(spec, n, data_dir, seed)
    outputs, _ = run_outputs(runtime, spec, prompt_ids(runtime, spec, rows), adapter, batch_size)
    return score_outputs(spec, outputs, rows)


def adapter_on_task(runtime: Runtime, adapter: str, spec, n: int = DEFAULT_N, data_dir=None, seed: int = 0,
                    batch_size: int | None = None) -> dict:
    """One adapter's scores on one task with their 95% intervals ({"scores", "intervals"}; `zoo eval --tasks`)."""
    from zoo.bootstrap import intervals

    rows = eval_rows(spec, n, data_dir, seed)
    run = scored_run(runtime, spec, rows, adapter, batch_size)
    return {"scores": run["scores"], "intervals": intervals(run["examples"], seed=seed)}


def evaluate(runtime: Runtime, name: str, spec, n: int = DEFAULT_N, data_dir=None, seed: int = 0,
             batch_size: int | None = None, ood_n: int | None = None) -> dict:
    """Base vs adapter `name` on `n` rows of `spec`'s eval split and `ood_n` (default `n`) of its out-of-domain
    set: metrics with 95% bootstrap intervals, timings and a few side-by-side examples."""
    rows = eval_rows(spec, n, data_dir, seed)
    scores, base, adapter = compare(runtime, name, spec, rows, seed, batch_size)
    examples = [
        {"prompt": spec.prompt(r, 0), "reference": spec.references(r)[0], "base": b, "adapter": a}
        for r, b, a in list(zip(rows, base["outputs"], adapter["outputs"]))[:EXAMPLES_IN_REPORT]
    ]
    return {
        "task": spec.name, "name": name, "split": spec.eval_split, "seed": seed, "metric": spec.primary_metric,
        **scores, "ood": evaluate_ood(runtime, name, spec, ood_n or n, data_dir, seed, batch_size),
        "seconds": {"base": round(base["seconds"], 1), "adapter": round(adapter["seconds"], 1)},
        "examples": examples,
    }


def evaluate_ood(runtime: Runtime, name: str, spec, n: int, data_dir=None, seed: int = 0,
                 batch_size: int | None = None) -> dict | None:
    """Base vs adapter on the task's out-of-domain set (`spec.ood`), through the same loader as the eval split;
    {"skipped": why} when its data is not here, None when the task names none."""
    from zoo.data import DataMissing, load_ood_rows

    if not spec.ood:
        return None
    where = dict(zip(("dataset", "split"), ood_source(spec)))
    try:
        rows = load_ood_rows(spec, data_dir, limit=n, seed=seed)
    except DataMissing as e:
        return {**where, "skipped": str(e)}
    scores, _, _ = compare(runtime, name, spec, rows, seed, batch_size)
    return {**where, **scores}


def keep_base_answers(runtime: Runtime, spec, n: int = DEFAULT_N, data_dir=None, seed: int = 0,
                      batch_size: int | None = None, ood_n: int | None = None, defer_ood: bool = False) -> dict:
    """The base's answers on the samples `evaluate` will draw (in domain, and out of domain when its data is
    here), generated now and kept in the zoo's cache: `zoo run` measures from them how long the adapters'
    evaluation will take before it plans their training. Per sample (in_domain, out_of_domain): scores, the
    generation seconds (of the run that made the answers), whether they were read back from the cache and the
    prompts' tokens. With `defer_ood` the out-of-domain sample is only drawn and its prompt tokens counted (`zoo
    run` sizes it from them before generating it)."""
    from zoo.data import DataMissing, load_ood_rows

    samples = {"in_domain": ((spec.dataset, spec.eval_split), lambda: eval_rows(spec, n, data_dir, seed))}
    if spec.ood:
        samples["out_of_domain"] = (ood_source(spec), lambda: load_ood_rows(spec, data_dir, limit=ood_n or n,
                                                                         seed=seed))
    out = {}
    for kind, ((dataset, split), rows_of) in samples.items():
        try:
            rows = rows_of()
        except DataMissing as e:
            out[kind] = {"dataset": dataset, "skipped": str(e)}
            continue
        ids = prompt_ids(runtime, spec, rows)
        where = {"dataset": dataset, "split": split, "n": len(rows), "prompt_tokens": sum(map(len, ids))}
        if defer_ood and kind == "out_of_domain":
            out[kind] = {**where, "deferred": True}
            continue
        run = base_run(runtime, spec, rows, ids, batch_size)
        out[kind] = {**where, "scores": run["scores"], "seconds": round(run["seconds"], 2),
                     "kept": bool(run.get("kept"))}
    return out


def ood_source(spec) -> tuple[str, str]:
    """(data set, split) of the task's out-of-domain sample."""
    from zoo.data import ood_split

    return spec.ood["dataset"], ood_split(spec)


def summary(result: dict) -> dict:
    """The part of a result that goes into the manifest and `zoo eval --json`."""
    keys = ("task", "name", "n", "split", "seed", "metric", "base", "adapter", "intervals", "ood")
    return {k: result[k] for k in keys if k in result}
