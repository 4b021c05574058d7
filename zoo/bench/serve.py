"""The bench's `serve` section: `zoo serve` under concurrent clients, and side by side with another engine.

Clients are the official `openai` package, streaming, so the first token's arrival is seen. Measured on a live
server on a loopback port (`zoo.api.local`): 16 concurrent clients with mixed routes vs the same requests one at a
time (tokens/s, p50/p95 latency and time to first token), and head-of-line blocking (short requests while four
long generations run, vs alone). Any OpenAI-compatible URL can be measured with the same code (`run_clients`),
which is how `zoo.bench.engines` compares vLLM on the same requests.
"""

from __future__ import annotations

import asyncio
import time

from zoo.bench.measure import progress

PROMPTS = [
    "Is the following sentence positive or negative?\n{}",
    "Dialogue:\n#Person1#: {}\n#Person2#: I see, let me think about it.\n\nSummary:",
    "Context:\n{} The committee met in Geneva in 1998.\n\nQ: Where did the committee meet?\nA (short span from "
    "the context):",
    "Tell me something nice about {}",
]
FILLERS = ["the film was a delight from start to end.", "the service was slow and the soup cold.",
           "we should move the meeting to Friday.", "my neighbour's cat", "the train left on time.",
           "rainy afternoons", "a quiet, well-acted drama.", "the new library downtown."]
LONG = "Write a long, detailed story about a lighthouse keeper and the ships she guided, chapter by chapter."


def mixed_requests(n: int, models: list[str]) -> list[tuple[str, str]]:
    """(model, prompt) pairs: the four kinds of prompt in turn, each sent to `models` in turn (`auto` routes)."""
    return [(models[i % len(models)], PROMPTS[i % len(PROMPTS)].format(FILLERS[i % len(FILLERS)]))
            for i in range(n)]


async def one(client, model: str, prompt: str, max_tokens: int) -> dict:
    """Stream one greedy answer: its time to first token, latency, token count and text."""
    start = time.perf_counter()
    first, tokens, text = None, 0, []
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first if first is not None else time.perf_counter() - start
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter() - start
    return {"ttft": first if first is not None else end, "latency": end, "tokens": tokens, "text": "".join(text)}


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def summary(results: list[dict], wall: float) -> dict:
    lat, ttft = [r["latency"] for r in results], [r["ttft"] for r in results]
    return {"tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 2), "wall_s": round(wall, 2),
            "requests": len(results), "ttft_p50_ms": percentile_ms(ttft, 0.5),
            "ttft_p95_ms": percentile_ms(ttft, 0.95), "latency_p50_ms": percentile_ms(lat, 0.5),
            "latency_p95_ms": percentile_ms(lat, 0.95)}


async def run_clients(url: str, requests: list[tuple[str, str]], max_tokens: int, together: bool,
                      api_key: str = "none") -> tuple[dict, list[str]]:
    """The requests against any OpenAI-compatible server, all at once or one at a time: (summary, answers)."""
    import openai

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=900) as client:
        await one(client, requests[0][0], requests[0][1], 2)  # warm-up: first-call costs are not the server's
        start = time.perf_counter()
        if together:
            results = list(await asyncio.gather(*(one(client, m, p, max_tokens) for m, p in requests)))
        else:
            results = [await one(client, m, p, max_tokens) for m, p in requests]
        wall = time.perf_counter() - start
    return summary(results, wall), [r["text"] for r in results]


async def head_of_line(url: str, requests: list[tuple[str, str]]) -> dict:
    """p95 time to first token of short requests (one at a time) while four long generations run, over alone."""
    import openai

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=900) as client:
        alone = [(await one(client, m, p, 8))["ttft"] for m, p in requests]
        longs = [asyncio.create_task(one(client, "base", LONG, 256)) for _ in range(4)]
        await asyncio.sleep(1.0)  # the long ones are decoding
        loaded = [(await one(client, m, p, 8))["ttft"] for m, p in requests]
        await asyncio.gather(*longs)
    alone_ms, loaded_ms = percentile_ms(alone, 0.95), percentile_ms(loaded, 0.95)
    return {"alone_ttft_p95_ms": alone_ms, "loaded_ttft_p95_ms": loaded_ms,
            "ratio": round(loaded_ms / max(alone_ms, 1e-3), 2)}


def bench_serve(work_zoo, base: str, clients: int, max_tokens: int) -> dict:
    """`zoo serve` on the bench's work zoo: `clients` mixed requests concurrently vs one at a time, and
    head-of-line blocking. Routes by content (`auto`) when the zoo has a router, else names adapters in turn."""
    from zoo.api.local import local_server
    from zoo.serving.runtime import Runtime

    with local_server(lambda: Runtime(work_zoo, base=base), max_batch=max(16, clients)) as (url, scheduler):
        models = ["auto"] if scheduler.has_router else scheduler.runtime.adapters + ["base"]
        requests = mixed_requests(clients, models)
        progress(f"serve: {clients} requests over {', '.join(models)} one at a time, then together...")
        alone, alone_answers = asyncio.run(run_clients(url, requests, max_tokens, together=False))
        together, together_answers = asyncio.run(run_clients(url, requests, max_tokens, together=True))
        progress("serve: head-of-line blocking (short requests while four long ones decode)...")
        hol = asyncio.run(head_of_line(url, requests[:8]))
    same = sum(a == b for a, b in zip(alone_answers, together_answers))
    return {"models": models, "max_tokens": max_tokens, "sequential": alone, "concurrent": together,
            "same_answers": f"{same}/{len(requests)}", "head_of_line": hol,
            "concurrency_speedup": round(together["tokens_per_s"] / max(alone["tokens_per_s"], 1e-9), 2)}
