"""`zoo serve` under load and against the clock: 50 concurrent clients in bursts (no error, the sequential
answers, memory back to its level) and a request that runs out of time (504, the server keeps answering)."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import openai
import pytest

from tests.helpers import memory_levels
from tests.helpers import SERVE_PROMPTS as PROMPTS
from tests.test_serve import error_of
from zoo.api.local import local_server
from zoo.serving.runtime import Runtime

CLIENTS = 50
MODELS = ("sst", "squad", "dsum", "base")


@pytest.fixture(scope="module")
def roomy_server(served_zoo, tiny_base_dir, tmp_path_factory):
    """Room for 50 in flight (16 decoding, 64 queued: the defaults); fp32 so that greedy answers do not depend on
    a batch's make-up (see test_serve's `server`)."""
    base = shutil.copytree(tiny_base_dir, tmp_path_factory.mktemp("load") / "base")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ZOO_DTYPE", "fp32")
        with local_server(lambda: Runtime(served_zoo, base=str(base), quant=False)) as (url, scheduler):
            yield url, scheduler


def burst_requests() -> list[tuple[str, str]]:
    """50 (prompt, model) pairs over three adapters and the base, each prompt made distinct."""
    texts = list(PROMPTS.values())
    return [(f"{texts[i % len(texts)]} ({i})", MODELS[i % len(MODELS)]) for i in range(CLIENTS)]


async def answer_all(url: str, requests: list[tuple[str, str]], together: bool) -> list[str]:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120) as client:
        def call(prompt, model):
            return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                  temperature=0, max_tokens=8)
        if together:
            answers = await asyncio.gather(*(call(p, m) for p, m in requests))
        else:
            answers = [await call(p, m) for p, m in requests]
    return [a.choices[0].message.content for a in answers]


@pytest.mark.reliability
def test_fifty_concurrent_clients_in_bursts_get_the_sequential_answers(roomy_server):
    """Three bursts of 50 concurrent clients: no error (no 429: 50 fit in flight), every answer equal to the one it
    gets alone, and no tensor left behind by the later bursts (the first one sets the level: a full batch's
    buffers; the per-batch-layout LoRA gates are a bounded cache, emptied before counting; RSS only loosely:
    allocator arenas)."""
    from zoo.serving.lora_serving import stacked_gate

    url, scheduler = roomy_server
    requests = burst_requests()
    expected = asyncio.run(answer_all(url, requests, together=False))
    assert asyncio.run(answer_all(url, requests, together=True)) == expected
    rss_before, tensors_before, _ = memory_levels(stacked_gate.cache_clear)
    for _ in range(2):
        assert asyncio.run(answer_all(url, requests, together=True)) == expected
    rss_after, tensors_after, _ = memory_levels(stacked_gate.cache_clear)
    assert tensors_after <= tensors_before, "tensors left behind by finished requests"
    assert rss_after - rss_before < 300 * 2**20, f"RSS grew by {(rss_after - rss_before) / 2**20:.0f} MB"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'zoo_errors_total{status="429"}' not in metrics
    assert not scheduler.batch.rows and scheduler._in_flight == 0


@pytest.fixture
def slow_server(served_zoo, tiny_base_dir, tmp_path):
    """A server whose requests may take one second, with every decode step made to take 0.2 s."""
    base = shutil.copytree(tiny_base_dir, tmp_path / "base")
    with local_server(lambda: Runtime(served_zoo, base=str(base), quant=False), timeout_s=1.0) as (url, scheduler):
        step = scheduler.batch.step

        def slow_step():
            time.sleep(0.2)
            return step()

        scheduler.batch.step = slow_step
        yield url, scheduler, step


@pytest.mark.reliability
def test_a_request_over_its_time_is_504_and_leaves_the_batch(slow_server):
    """40 tokens at 0.2 s a step cannot finish in a second: the whole answer is a 504 `timeout`, a stream ends with
    the same error event; their rows leave the batch, and the server answers the next request."""
    url, scheduler, fast_step = slow_server
    body = {"model": "base", "prompt": "once upon a time", "max_tokens": 40, "temperature": 0}
    started = time.monotonic()
    late = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert late.status_code == 504 and error_of(late)["code"] == "timeout"
    assert time.monotonic() - started < 5
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=30) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert '"code": "timeout"' in events[-1] and "[DONE]" not in events[-1]
    scheduler.batch.step = fast_step
    deadline = time.monotonic() + 10
    while scheduler.batch.rows and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not scheduler.batch.rows
    ok = httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 3}, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3
