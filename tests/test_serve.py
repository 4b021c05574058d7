"""`zoo serve`: a live server on a loopback socket, called with the official `openai` client (and raw HTTP for
what a client library would refuse to send). A tiny random model for most tests; the real base for two e2e ones."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading

import httpx
import openai
import pytest

from tests.helpers import SERVE_PROMPTS, SERVE_TASKS, make_adapter
from zoo.api.config import ServeConfig
from zoo.api.local import local_server, wait_for
from zoo.errors import ZooError
from zoo.serving.runtime import Runtime
from zoo.store import Zoo

KEY = "test-key"
TASK_OF, PROMPTS = SERVE_TASKS, SERVE_PROMPTS


def healthy(url: str) -> bool:
    return httpx.get(f"{url}/health").status_code == 200


@pytest.fixture(scope="module")
def server(served_zoo, tiny_base_dir):
    """The tiny zoo served in fp32: a random model's logits are so flat that bf16 rounding (a prompt prefilled
    alone or packed with 15 others) flips greedy picks, which would hide real differences in batching."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ZOO_DTYPE", "fp32")
        with local_server(lambda: Runtime(served_zoo, base=str(tiny_base_dir), quant=False), api_key=KEY,
                         max_batch=8, max_queue=16, max_prompt_tokens=512, max_tokens=256) as (url, scheduler):
            yield url, scheduler


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def chat(client, prompt: str, model: str, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          temperature=kw.pop("temperature", 0), max_tokens=kw.pop("max_tokens", 12),
                                          **kw)


# the API -------------------------------------------------------------------------------------------------
def test_models_lists_adapters_auto_and_base_with_the_base_as_parent(client, tiny_base_dir):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"auto", "base", *TASK_OF}
    assert {m.parent for n, m in models.items() if n != "base"} == {tiny_base_dir.name}
    assert "/" not in json.dumps([m.model_dump() for m in models.values()])  # no local paths


def test_auto_routes_by_content_and_names_the_adapter(client, server):
    for expected, prompt in PROMPTS.items():
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=4)
        answer = raw.parse()
        assert answer.model == expected
        route = answer.model_extra["zoo_route"]
        assert json.loads(raw.headers["x-zoo-route"]) == route
        assert abs(sum(route["probs"].values()) - 1) < 1e-3 and route["route"] in route["probs"]
        forced = chat(client, prompt, expected, max_tokens=4)
        assert answer.choices[0].message.content == forced.choices[0].message.content


def test_chat_and_completions_report_usage_and_finish_reason(client):
    answer = chat(client, "hello there", "sst", max_tokens=5)
    assert answer.object == "chat.completion" and answer.choices[0].finish_reason in ("length", "stop")
    assert answer.usage.completion_tokens <= 5 and answer.usage.prompt_tokens > 5
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    done = client.completions.create(model="base", prompt="The sea at night", max_tokens=6, temperature=0)
    assert done.object == "text_completion" and isinstance(done.choices[0].text, str)
    assert done.usage.prompt_tokens == 4 and done.usage.completion_tokens <= 6


def test_forced_adapter_greedy_equals_runtime_generate(client, server):
    runtime = server[1].runtime
    for model, adapter in [("sst", "sst"), ("squad", "squad"), ("dsum", "dsum"), ("base", "none")]:
        prompt = PROMPTS["squad"]
        expected = runtime.generate(prompt, adapter=adapter, max_new_tokens=16)["answer"]
        assert chat(client, prompt, model, max_tokens=16).choices[0].message.content == expected, model


def test_streaming_with_the_async_client_equals_the_whole_answer(client, server):
    whole = chat(client, PROMPTS["dsum"], "dsum", max_tokens=20).choices[0].message.content

    async def streamed():
        async with openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="dsum", messages=[{"role": "user", "content": PROMPTS["dsum"]}], temperature=0, max_tokens=20,
                stream=True, stream_options={"include_usage": True})
            return [chunk async for chunk in stream]

    chunks = asyncio.run(streamed())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0
    raw = httpx.post(f"{server[0]}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "base", "prompt": "hi", "max_tokens": 3, "stream": True}, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_sampling_is_real_and_seeded(client):
    def sampled(seed):
        return chat(client, "tell me a story", "base", temperature=1.0, seed=seed, max_tokens=12) \
            .choices[0].message.content

    assert sampled(1) == sampled(1)
    assert len({sampled(1), sampled(2), sampled(3)}) > 1
    nucleus = chat(client, "tell me a story", "base", temperature=1.0, top_p=1e-6, seed=5, max_tokens=12)
    assert nucleus.choices[0].message.content == chat(client, "tell me a story", "base", max_tokens=12) \
        .choices[0].message.content  # a nucleus of one token is greedy


def test_stop_sequence_cuts_the_answer(client):
    whole = chat(client, "why?", "squad", max_tokens=24).choices[0].message.content
    stop = whole[len(whole) // 2:len(whole) // 2 + 3]
    cut = chat(client, "why?", "squad", max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == whole[:whole.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_sixteen_concurrent_requests_over_adapters_equal_sequential_answers(client, server):
    names = ["sst", "squad", "dsum", "base"]
    prompts = [(f"question {i}: " + "why " * (i % 5), names[i % 4]) for i in range(16)]
    sequential = [chat(client, p, m, max_tokens=8 + i).choices[0].message.content
                  for i, (p, m) in enumerate(prompts)]

    async def together():
        async with openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0) as aclient:
            calls = [aclient.chat.completions.create(model=m, messages=[{"role": "user", "content": p}],
                                                     temperature=0, max_tokens=8 + i)
                     for i, (p, m) in enumerate(prompts)]
            return [a.choices[0].message.content for a in await asyncio.gather(*calls)]

    batches = server[1].metrics.batch
    before = batches.collect()[0].samples
    assert asyncio.run(together()) == sequential
    after = {s.name: s.value for s in batches.collect()[0].samples}
    steps = after["zoo_batch_size_count"] - {s.name: s.value for s in before}["zoo_batch_size_count"]
    rows = after["zoo_batch_size_sum"] - {s.name: s.value for s in before}["zoo_batch_size_sum"]
    assert rows / steps > 2  # the requests really shared decode steps


def test_metrics_count_requests_tokens_and_latencies(client, server):
    chat(client, "hello", "sst", max_tokens=3)
    text = httpx.get(f"{server[0]}/metrics").text
    for name in ("zoo_requests_total", "zoo_completion_tokens_total", "zoo_queue_length", "zoo_batch_size_bucket",
                 "zoo_time_to_first_token_seconds_bucket", "zoo_request_latency_seconds_bucket"):
        assert name in text
    assert 'zoo_requests_total{endpoint="chat",route="sst"}' in text


# refusals ------------------------------------------------------------------------------------------------
def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code"} and "Traceback" not in response.text
    return body["error"]


def post(url: str, body, key: str | None = KEY, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (bytes, str)):
        return httpx.post(url, content=body, headers={**headers, "content-type": "application/json"}, timeout=30)
    return httpx.post(url, json=body, headers=headers, timeout=30, **kw)


@pytest.mark.reliability
def test_without_or_with_a_wrong_key_is_401(server):
    """A call without the API key, or with a wrong one, gets 401; /health needs no key."""
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0).models.list()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        refused = httpx.get(f"{server[0]}/v1/models", headers=headers)
        assert refused.status_code == 401 and error_of(refused)["code"] == "invalid_api_key"
    assert healthy(server[0])


@pytest.mark.reliability
def test_unknown_model_and_path_are_404(client, server):
    """An unknown model gets 404 model_not_found; an unknown path a 404 in the same error JSON."""
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, "hi", "no-such-adapter")
    assert e.value.code == "model_not_found"
    assert httpx.get(f"{server[0]}/v2/nothing").status_code == 404


@pytest.mark.reliability
def test_malformed_requests_are_400_or_422(server):
    """Broken JSON gets 400; well-formed JSON with a missing or wrong field gets 422; n=2 gets 400."""
    url = f"{server[0]}/v1/chat/completions"
    assert post(url, b'{"model": "base", "messages": [').status_code == 400
    assert post(url, {"model": "base"}).status_code == 422
    assert post(url, {"model": "base", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}) \
        .status_code == 422
    bad_n = post(url, {"model": "base", "messages": [{"role": "user", "content": "hi"}], "n": 2})
    assert bad_n.status_code == 400 and "n=1" in error_of(bad_n)["message"]
    assert post(url, {"model": "base", "messages": [{"role": "user", "content": "  "}]}).status_code == 400


@pytest.mark.reliability
def test_oversized_prompts_are_413_and_huge_max_tokens_400(client, server):
    """A 1 MB prompt, or one over the prompt-token limit, gets 413; max_tokens of 10**9 gets 400."""
    url = f"{server[0]}/v1/completions"
    huge = post(url, {"model": "base", "prompt": "x" * 1_000_000})
    assert huge.status_code == 413 and error_of(huge)["code"] == "request_too_large"
    long = post(url, {"model": "base", "prompt": "word " * 2000})
    assert long.status_code == 413 and error_of(long)["code"] == "prompt_too_long"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        chat(client, "hi", "base", max_tokens=10**9)
    assert chat(client, "hi", "base", max_tokens=2).usage.completion_tokens <= 2  # still answering


@pytest.fixture
def one_row_server(tmp_path, tiny_base_dir, served_zoo):
    """A server with room for one request in flight, on its own copy of the base (bases are shared per path)."""
    base = shutil.copytree(tiny_base_dir, tmp_path / "base")
    with local_server(lambda: Runtime(served_zoo, base=str(base), quant=False), max_batch=1, max_queue=0,
                     max_tokens=2000, max_prompt_tokens=64) as (url, scheduler):
        yield url, scheduler


@pytest.mark.reliability
def test_full_queue_is_429_and_a_dropped_stream_frees_its_row(one_row_server):
    """With the one place in flight taken by a stream, a request gets 429 with Retry-After; once that client
    drops mid-stream its row is freed and the server answers again."""
    url, scheduler = one_row_server
    # sampled from a random model's near-flat distribution: the end-of-text token is one of 49k, not soon
    body = {"model": "base", "prompt": "once upon a time", "max_tokens": 2000, "temperature": 1, "seed": 0}
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=30) as stream:
        lines = stream.iter_lines()  # one iterator: a dropped one closes the response
        assert next(lines).startswith("data: {")  # the first chunk: the stream holds its row
        busy = post(f"{url}/v1/completions", {**body, "max_tokens": 2}, key=None)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert error_of(busy)["type"] == "rate_limit_error"
        wait_for(lambda: scheduler.batch.rows, 30)  # decoding, not only queued
        dropped = scheduler.batch.rows[0]
    wait_for(lambda: not scheduler.batch.rows, 30)  # the dropped client's row left the batch
    assert dropped.tag.cancelled and dropped.finish_reason is None and len(dropped.tokens) < 2000
    answers: list[httpx.Response] = []
    wait_for(lambda: answers.append(post(f"{url}/v1/completions", {**body, "max_tokens": 2}, key=None))
             or answers[-1].status_code != 429, 30)  # its place in flight is freed with the row, at a step's end
    assert answers[-1].status_code == 200 and answers[-1].json()["usage"]["completion_tokens"] <= 2


@pytest.mark.reliability
def test_health_is_503_until_loaded_and_requests_wait_for_it(tmp_path):
    """Before the model is loaded /health and /v1 answer 503; a load that fails stays 503 and stops the server."""
    release, failed = threading.Event(), threading.Event()

    def load():
        release.wait(30)
        raise ZooError("no base here")

    with local_server(load, ready=False) as (url, scheduler):
        scheduler.on_load_failed = failed.set
        assert httpx.get(f"{url}/health").json() == {"status": "loading"}
        loading = post(f"{url}/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "a"}]})
        assert loading.status_code == 503 and error_of(loading)["code"] == "not_ready"
        release.set()
        assert failed.wait(30)
        assert httpx.get(f"{url}/health").json() == {"status": "failed"}


def test_a_local_server_leaves_the_host_process_logging_alone():
    """An in-process server (tests, benchmarks, a notebook) must not reset its host's logging: uvicorn's default
    `dictConfig` closes every handler the process has, which closed pytest's captured stderr under absl's handler."""
    import logging

    class Spy(logging.Handler):
        closed = False

        def close(self):
            self.closed = True
            super().close()

    spy, loading = Spy(), threading.Event()
    logging.getLogger("zoo-test-host").addHandler(spy)
    try:
        with local_server(lambda: loading.wait(30) and None, ready=False) as (url, _):
            assert httpx.get(f"{url}/health").json() == {"status": "loading"}
            loading.set()
        assert not spy.closed
    finally:
        logging.getLogger("zoo-test-host").removeHandler(spy)


def test_network_host_without_a_key_is_refused(capsys):
    from zoo.cli import main

    with pytest.raises(ZooError, match="--api-key"):
        ServeConfig(host="0.0.0.0").check_exposure()
    ServeConfig(host="0.0.0.0", api_key="k").check_exposure()
    ServeConfig(host="0.0.0.0", insecure=True).check_exposure()
    ServeConfig(host="::1").check_exposure()
    assert main(["serve", "--host", "0.0.0.0", "--max-batch", "4"]) == 2
    assert "--insecure" in capsys.readouterr().err


# the real base -------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_real_base_batched_answers_equal_generate(tmp_path, embedded_base_dir, monkeypatch):
    """On SmolLM2 (NF4) with two adapters: 16 concurrent requests equal what `Runtime.generate` (`zoo generate
    --adapter`) answers alone. In fp32, with deltas of a trained adapter's size: bf16 rounding depends on a batch's
    make-up (NF4 or dense weights, fp32 or bf16 LoRA matmuls by pass size) and flips near-tied greedy picks, in the
    runtime's own batches too (2 of these 16 differ between its batched and one-at-a-time answers)."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("ZOO_DTYPE", "fp32")
    zoo = Zoo(tmp_path / "zoo")
    for i, (name, task) in enumerate(list(TASK_OF.items())[:2]):
        make_adapter(zoo, embedded_base_dir, name, task, seed=i)
        path = zoo.adapter_dir(name) / "adapter_model.safetensors"
        save_file({k: v * 0.1 if "lora_B" in k else v for k, v in load_file(path).items()}, path)
    prompts = [(text, ["sst", "squad", "base"][i % 3]) for i, text in enumerate(list(PROMPTS.values()) * 4)]
    with local_server(lambda: Runtime(zoo), max_batch=16) as (url, scheduler):
        expected = [scheduler.runtime.generate(p, adapter="none" if m == "base" else m, max_new_tokens=12)["answer"]
                    for p, m in prompts]

        async def together():
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as aclient:
                calls = [aclient.chat.completions.create(model=m, messages=[{"role": "user", "content": p}],
                                                         temperature=0, max_tokens=12) for p, m in prompts]
                return [a.choices[0].message.content for a in await asyncio.gather(*calls)]

        assert asyncio.run(together()) == expected
