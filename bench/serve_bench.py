"""Measure `zoo serve` on a zoo: 16 concurrent clients vs the same requests one at a time, time to first token, and
head-of-line blocking (short requests while four long generations run, vs alone). Prints one JSON object.

    .venv/bin/python bench/serve_bench.py --zoo zoo-out

Not a test: it times things. The server runs in this process on a loopback port (`zoo.api.local`); clients are
the official `openai` package, streaming, so the first token's arrival is seen. No vLLM comparison here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

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


def requests(n: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)].format(FILLERS[i % len(FILLERS)]) for i in range(n)]


async def one(client, model: str, prompt: str, max_tokens: int) -> dict:
    """Stream one greedy answer; its time to first token, latency and token count."""
    start = time.perf_counter()
    first, tokens = None, 0
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter() - start
    return {"ttft": first if first is not None else end, "latency": end, "tokens": tokens}


def summary(results: list[dict], wall: float) -> dict:
    def pct(key, q):
        values = sorted(r[key] for r in results)
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1)

    return {"tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 2), "wall_s": round(wall, 2),
            "ttft_p50_ms": pct("ttft", 0.5), "ttft_p95_ms": pct("ttft", 0.95),
            "latency_p50_ms": pct("latency", 0.5), "latency_p95_ms": pct("latency", 0.95)}


async def sequential(client, model, prompts, max_tokens) -> dict:
    start = time.perf_counter()
    results = [await one(client, model, p, max_tokens) for p in prompts]
    return summary(results, time.perf_counter() - start)


async def concurrent(client, model, prompts, max_tokens) -> dict:
    start = time.perf_counter()
    results = await asyncio.gather(*(one(client, model, p, max_tokens) for p in prompts))
    return summary(list(results), time.perf_counter() - start)


async def head_of_line(client, model, shorts: list[str]) -> float:
    """p95 time to first token of short requests (one at a time) while four long generations run, over alone."""
    alone = [(await one(client, model, p, 8))["ttft"] for p in shorts]
    longs = [asyncio.create_task(one(client, "base", LONG, 256)) for _ in range(4)]
    await asyncio.sleep(1.0)  # the long ones are decoding
    loaded = [(await one(client, model, p, 8))["ttft"] for p in shorts]
    await asyncio.gather(*longs)
    p95 = lambda xs: sorted(xs)[min(len(xs) - 1, int(0.95 * len(xs)))]  # noqa: E731
    return round(p95(loaded) / p95(alone), 2)


async def measure(url: str, model: str, n: int, max_tokens: int) -> dict:
    import openai

    prompts = requests(n)
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600) as client:
        await one(client, model, prompts[0], 4)  # warm-up
        seq = await sequential(client, model, prompts, max_tokens)
        conc = await concurrent(client, model, prompts, max_tokens)
        hol = await head_of_line(client, model, prompts[:8])
    return {"serve_concurrency_speedup": round(conc["tokens_per_s"] / seq["tokens_per_s"], 2),
            "serve_ttft_p95_ms": conc["ttft_p95_ms"], "serve_hol_ttft_ratio": hol,
            "serve_vs_vllm_tokens_ratio": None, "vllm": "not run: this script has no vLLM comparison",
            "concurrent": conc, "sequential": seq, "requests": n, "max_tokens": max_tokens, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=None, help="zoo folder (default: $ZOO_DIR or ./zoo-out)")
    parser.add_argument("--base", default=None, help="base model (default: the zoo's)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    from zoo.api.local import local_server
    from zoo.serving.runtime import Runtime
    from zoo.store import Zoo

    zoo = Zoo(args.zoo)
    model = "auto" if (zoo.router_dir / "router.json").exists() else "base"
    with local_server(lambda: Runtime(zoo, base=args.base), max_batch=max(16, args.requests)) as (url, _):
        result = asyncio.run(measure(url, model, args.requests, args.max_tokens))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
