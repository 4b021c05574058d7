"""The sizes of one bench run: a frozen `BenchConfig`, three presets (`quick`, `full`, `tiny` for tests)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from zoo.base import DEFAULT_BASE

TRAIN_TASKS = ("sentiment", "qa")
ADAPTER_TASKS = ("sentiment", "qa", "summarization")  # shapes of the random adapters, in turn
SECTIONS = ("train", "inference", "memory", "router", "serve")
MB = 1024 * 1024


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one bench run; `quick` must finish in under 10 minutes on 2 CPU cores."""

    mode: str = "quick"
    base: str = DEFAULT_BASE
    device: str | None = None
    data_dir: str | None = None
    tasks: tuple[str, ...] = TRAIN_TASKS
    sections: tuple[str, ...] = SECTIONS
    train_examples: int = 48  # per recipe per task
    eval_n: int = 40  # validation rows scored per trained adapter
    gen_prompts: int = 32  # prompts per task, batched vs one at a time: whole batches, as most of `zoo eval`'s
    gen_batch: int = 16
    gen_new_tokens: int | None = None  # None: each task's own answer budget
    mixed_prompts: int = 32
    mixed_new_tokens: int = 32
    adapters_total: int = 10  # adapters loaded for the RSS measure
    latency_reps: int = 5
    router_prompts: int = 1000
    router_single: int = 200  # prompts routed one by one for p50/p99
    router_fit: tuple[tuple[str, object], ...] = ()  # extra `fit_router` arguments (tiny runs: a small fit)
    serve_clients: int = 16  # concurrent clients of `zoo serve` (and of another engine, side by side)
    serve_max_tokens: int = 48
    vllm_clients: int = 32  # concurrent summarization requests on zoo serve and on vLLM, side by side; 0: skip
    repeats: int = 1  # timed generation runs (best kept)
    reference_same_dtype: bool = False  # also train the reference in our compute dtype when they differ
    memory_matched: bool = True  # also train ours with the reference's peak RSS as its memory budget
    isolate: bool = True  # measured jobs in fresh processes; False (tests only) mixes their peaks


PRESETS = {
    "quick": BenchConfig(),
    "full": BenchConfig(mode="full", train_examples=160, eval_n=100, gen_prompts=48, mixed_prompts=64,
                        router_single=500, repeats=3, reference_same_dtype=True),
    "tiny": BenchConfig(mode="tiny", train_examples=8, memory_matched=False,
                        eval_n=2, gen_prompts=2, gen_batch=2, gen_new_tokens=3,
                        mixed_prompts=3, mixed_new_tokens=3, latency_reps=1, router_prompts=30, router_single=5,
                        serve_clients=3, serve_max_tokens=3, vllm_clients=0,
                        router_fit=(("rows_per_task", 12), ("features", "ngrams"), ("n_features", 2**12))),
}


def config_for(mode: str, **overrides) -> BenchConfig:
    """A preset with the overrides that were given (None means "the preset's value")."""
    return replace(PRESETS[mode], **{k: v for k, v in overrides.items() if v is not None})
