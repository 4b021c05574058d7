"""`zoo serve --upstream`: the router here, the model on another engine, called with the official `openai` client
over real sockets. The engines: a second `zoo serve` on a tiny zoo (what any OpenAI-compatible engine does),
a fake engine that misbehaves on demand (down, slow, 500, garbage) and records what it is sent (llama-server's
LoRA scales and prompt-cache rule). Real vLLM and llama.cpp servers: tests/test_upstream_engines.py."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
from fastapi import Request

from tests.helpers import SERVE_PROMPTS, SERVE_TASKS
from zoo.api.app import create_app
from zoo.api.config import ServeConfig
from zoo.api.local import local_server, wait_for
from zoo.api.upstream import UpstreamBackend, sse_data
from zoo.errors import ZooError
from zoo.serving.runtime import Runtime
from zoo.store import Zoo

KEY, ENGINE_KEY = "front-key", "engine-key"
TASK_OF, PROMPTS = SERVE_TASKS, SERVE_PROMPTS


@contextmanager
def running(app):
    """Serve an ASGI app on a free loopback port in a thread; yield its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="test-server")
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the server to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextmanager
def front(zoo: Zoo, upstream: str, **settings):
    """`zoo serve --upstream` in this process; yields `(url, backend)` once the router and names are read."""
    config = ServeConfig(upstream=upstream, **settings)
    backend = UpstreamBackend(zoo, config)
    with running(create_app(backend, config)) as url:
        wait_for(lambda: backend.names is not None or backend.load_failed, 60, "the router to load")
        yield url, backend


def client_for(url: str, key: str | None = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key or "none", max_retries=0, timeout=60)


def chat(client, prompt: str, model: str, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          temperature=kw.pop("temperature", 0), max_tokens=kw.pop("max_tokens", 8),
                                          **kw)


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture(scope="module")
def engine(served_zoo, tiny_base_dir):
    """The upstream: a second `zoo serve` on the tiny zoo (fp32: greedy answers that do not depend on batching),
    behind its own key."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ZOO_DTYPE", "fp32")
        with local_server(lambda: Runtime(served_zoo, base=str(tiny_base_dir), quant=False), api_key=ENGINE_KEY,
                          max_batch=8, max_prompt_tokens=512, max_tokens=256) as (url, _):
            yield url


@pytest.fixture(scope="module")
def zoo_front(served_zoo, engine):
    with front(served_zoo, engine, api_key=KEY, upstream_key=ENGINE_KEY, max_tokens=256) as (url, backend):
        yield url, backend


# in front of a second zoo serve ---------------------------------------------------------------------------
def test_models_and_health_come_from_the_router_and_names(zoo_front):
    url, backend = zoo_front
    models = {m.id: m for m in client_for(url).models.list().data}
    assert set(models) == {"auto", "base", *TASK_OF}
    assert {m.parent for n, m in models.items() if n != "base"} == {"base"}
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "adapters": sorted(TASK_OF), "upstream": "openai"}
    assert backend.router is not None  # the router is here; no base was loaded for the front


def test_auto_routes_here_and_the_engine_answers(zoo_front, engine):
    """Each prompt goes where the zoo's router sends it (the engine's own `auto` agrees), answered by the engine
    exactly as when that adapter is named there."""
    front_client, engine_client = client_for(zoo_front[0]), client_for(engine, ENGINE_KEY)
    chosen = set()
    for prompt in PROMPTS.values():
        raw = front_client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=4)
        answer = raw.parse()
        route = answer.model_extra["zoo_route"]
        assert json.loads(raw.headers["x-zoo-route"]) == route and route["route"] in route["probs"]
        assert route == zoo_front[1].router.route([prompt])[0]
        direct = chat(engine_client, prompt, "auto", max_tokens=4)
        assert answer.model == direct.model and route == direct.model_extra["zoo_route"]
        assert answer.choices[0].message.content == direct.choices[0].message.content
        assert answer.usage == direct.usage
        chosen.add(answer.model)
    assert {"sst", "squad", "base"} <= chosen  # the router's clear cases: three different models answered


def test_forced_adapters_and_base_equal_the_engine_direct(zoo_front, engine):
    """(Every adapter's answer is compared through `auto` above; here the names a client forces.)"""
    front_client, engine_client = client_for(zoo_front[0]), client_for(engine, ENGINE_KEY)
    for model in ("squad", "base"):
        got = chat(front_client, PROMPTS["sst"], model, max_tokens=6)
        assert got.model == model and "zoo_route" not in (got.model_extra or {})
        assert got.choices[0].message.content == chat(engine_client, PROMPTS["sst"], model, max_tokens=6) \
            .choices[0].message.content
    done = front_client.completions.create(model="sst", prompt="The sea at night", max_tokens=4, temperature=0)
    direct = engine_client.completions.create(model="sst", prompt="The sea at night", max_tokens=4, temperature=0)
    assert done.object == "text_completion" and done.choices[0].text == direct.choices[0].text
    assert done.usage.prompt_tokens == direct.usage.prompt_tokens


def test_streams_pass_through_relabelled(zoo_front):
    url = zoo_front[0]
    whole = chat(client_for(url), PROMPTS["squad"], "squad", max_tokens=6).choices[0].message.content

    async def streamed(usage: bool):
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": PROMPTS["squad"]}], temperature=0, max_tokens=6,
                stream=True, **({"stream_options": {"include_usage": True}} if usage else {}))
            return [chunk async for chunk in stream]

    chunks = asyncio.run(streamed(True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert {c.model for c in chunks} == {"squad"}
    assert {c.model_extra["zoo_route"]["route"] for c in chunks} == {"qa"}
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in asyncio.run(streamed(False)))  # the engine's usage chunk stays here
    raw = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "base", "prompt": "hi", "max_tokens": 3, "stream": True}, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_same_request_checks_and_error_json_as_local_serving(zoo_front):
    url = zoo_front[0]
    with pytest.raises(openai.AuthenticationError):
        client_for(url, "wrong").models.list()
    with pytest.raises(openai.NotFoundError) as e:
        chat(client_for(url), "hi", "no-such-adapter")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        chat(client_for(url), "hi", "base", max_tokens=10**9)
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    for body, status in [(b'{"model": "base", "messages": [', 400), (b'{"model": "base"}', 422),
                         (json.dumps({"model": "base", "messages": [{"role": "user", "content": "hi"}], "n": 2}), 400),
                         (json.dumps({"model": "base", "prompt": "x" * 1_000_000}), 413)]:
        refused = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=30)
        assert refused.status_code == status and set(refused.json()["error"]) >= {"message", "type", "code"}


def test_metrics_count_routes_and_tokens(zoo_front):
    url = zoo_front[0]
    chat(client_for(url), "hello", "sst", max_tokens=3)
    text = httpx.get(f"{url}/metrics").text
    assert 'zoo_requests_total{endpoint="chat",route="sst"}' in text
    assert 'zoo_completion_tokens_total{route="sst"}' in text and "zoo_request_latency_seconds_bucket" in text


def test_names_file_maps_routes_to_served_models(served_zoo, engine, tmp_path):
    """A names file as `zoo export` writes one: only sentiment served, so a QA prompt goes to the base."""
    names = tmp_path / "routes.json"
    names.write_text(json.dumps({"format": "adapter-zoo-vllm", "base": "base", "adapters": ["sst"],
                                 "routes": {"sentiment": "sst", "none": "base"}, "lora_modules": {}}))
    with front(served_zoo, engine, upstream_key=ENGINE_KEY, upstream_map=str(names)) as (url, _):
        client = client_for(url)
        assert {m.id for m in client.models.list().data} == {"auto", "base", "sst"}
        assert chat(client, PROMPTS["sst"], "auto").model == "sst"
        qa = chat(client, PROMPTS["squad"], "auto")
        assert qa.model == "base" and qa.model_extra["zoo_route"]["route"] == "qa"
        with pytest.raises(openai.NotFoundError):
            chat(client, "hi", "squad")


@pytest.mark.reliability
def test_wrong_upstream_key_is_a_clear_502(served_zoo, engine):
    """An engine that refuses our --upstream-key: 502 naming the option, never the engine's 401 to our client."""
    with front(served_zoo, engine, upstream_key="wrong") as (url, _):
        with pytest.raises(openai.InternalServerError) as e:
            chat(client_for(url), "hi", "base")
    assert e.value.status_code == 502 and "--upstream-key" in e.value.message


# an engine that misbehaves ------------------------------------------------------------------------------
class FakeEngine:
    """An OpenAI-compatible engine (or llama-server) that answers in `mode` and records each request."""

    ANSWER = ["fake", " answer"]

    def __init__(self, loras: list[str] | None = None):
        self.mode, self.seen = "ok", []
        self.loras = loras or []

    def app(self):
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

        @app.get("/lora-adapters")
        async def lora_adapters():
            return [{"id": i, "path": f"/models/{name}.gguf", "scale": 0.0} for i, name in enumerate(self.loras)]

        async def complete(request: Request):
            body = await request.json()
            self.seen.append({"body": body, "authorization": request.headers.get("authorization")})
            if self.mode == "slow":
                await asyncio.sleep(4)
            if self.mode.isdigit():
                return JSONResponse({"error": {"message": f"engine says {self.mode}"}}, status_code=int(self.mode))
            if self.mode == "garbage":
                return PlainTextResponse("<html>not an engine</html>")
            if self.mode == "no-choices":
                return {"id": "x", "object": "chat.completion"}
            chat = "messages" in body
            if body.get("stream"):
                return StreamingResponse(self.stream(chat), media_type="text/event-stream")
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(self.ANSWER)}} if chat \
                else {"index": 0, "text": "".join(self.ANSWER)}
            return {"id": "fake-1", "object": "chat.completion", "model": body["model"], "choices": [
                {**choice, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                                "total_tokens": 5}}

        app.post("/v1/chat/completions")(complete)
        app.post("/v1/completions")(complete)
        return app

    async def stream(self, chat: bool):
        for i, piece in enumerate(self.ANSWER):
            delta = {"delta": {"content": piece, **({"role": "assistant"} if i == 0 else {})}} if chat \
                else {"text": piece}
            yield f"data: {json.dumps({'id': 'c', 'model': 'fake', 'choices': [{'index': 0, **delta}]})}\n\n"
            if self.mode == "stream-slow":
                await asyncio.sleep(4)
            if self.mode == "stream-garbage":
                yield "this is not an event\n\n"
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        yield f"data: {json.dumps({'id': 'c', 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"


@pytest.fixture(scope="module")
def fake_engine():
    fake = FakeEngine(loras=["sst", "squad-lora", "dsum", "other"])
    with running(fake.app()) as url:
        yield fake, url


@pytest.fixture(scope="module")
def fake_front(served_zoo, fake_engine):
    with front(served_zoo, fake_engine[1], timeout_s=1.5, upstream_key="k") as (url, _):
        yield url


@pytest.mark.reliability
def test_an_upstream_that_is_down_is_a_quick_503(served_zoo):
    """With nothing listening at --upstream, requests (whole and streamed) get 503 in seconds, /health says so,
    and the server keeps answering."""
    with front(served_zoo, f"http://127.0.0.1:{closed_port()}") as (url, _):
        for stream in (False, True):
            began = time.monotonic()
            with pytest.raises(openai.InternalServerError) as e:
                chat(client_for(url), PROMPTS["sst"], "auto", stream=stream)
            assert e.value.status_code == 503 and e.value.code == "upstream_unavailable"
            assert time.monotonic() - began < 5
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and health.json() == {"status": "upstream_unavailable"}


@pytest.mark.reliability
@pytest.mark.parametrize("mode,status,code", [
    ("500", 502, "upstream_error"), ("garbage", 502, "upstream_bad_answer"), ("no-choices", 502, "upstream_bad_answer"),
    ("404", 502, "upstream_model_missing"), ("503", 503, "upstream_unavailable"), ("400", 400, "upstream_refused"),
    ("slow", 504, "upstream_timeout")])
def test_upstream_failures_map_to_clear_errors(fake_engine, fake_front, mode, status, code):
    """An engine that fails (5xx), answers garbage, lacks the model, refuses the request or answers after the
    timeout: the client gets OpenAI's error JSON with a status it can act on, within the timeout."""
    fake, url = fake_engine[0], fake_front
    fake.mode = mode
    try:
        began = time.monotonic()
        refused = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
            "model": "sst", "messages": [{"role": "user", "content": "hi"}]})
        assert time.monotonic() - began < 4
    finally:
        fake.mode = "ok"
    error = refused.json()["error"]
    assert refused.status_code == status and error["code"] == code, error
    assert "Traceback" not in refused.text and "127.0.0.1" not in refused.text
    assert chat(client_for(url), "hi", "sst").choices[0].message.content == "fake answer"  # still answering


@pytest.mark.reliability
@pytest.mark.parametrize("mode,status", [("stream-garbage", 502), ("stream-slow", 504)])
def test_a_stream_that_breaks_ends_with_an_error_event(fake_engine, fake_front, mode, status):
    """An engine whose stream turns to garbage, or stalls past the timeout, mid-answer: the client's stream ends
    with an error event (its status in the message's code), not a hang."""
    fake = fake_engine[0]
    fake.mode = mode
    try:
        began = time.monotonic()
        raw = httpx.post(f"{fake_front}/v1/completions", timeout=30, json={
            "model": "base", "prompt": "hi", "stream": True})
        assert time.monotonic() - began < 4
    finally:
        fake.mode = "ok"
    events = [sse_data(line) for line in raw.text.splitlines() if line.strip()]
    assert events[0]["choices"][0]["text"] == "fake" and events[0]["model"] == "base"
    assert "error" in events[-1] and events[-1]["error"]["code"].startswith("upstream_")
    assert (events[-1]["error"]["code"] == "upstream_timeout") == (status == 504)


@pytest.mark.reliability
def test_full_is_429_and_a_dropped_stream_gives_its_place_back(served_zoo, fake_engine):
    """With its one place in flight taken by a stream, the front answers 429 with Retry-After; once that client
    drops mid-stream, the engine's connection is closed and the place is free again."""
    fake, engine_url = fake_engine
    with front(served_zoo, engine_url, max_batch=1, max_queue=0, timeout_s=20) as (url, backend):
        fake.mode = "stream-slow"
        try:
            body = {"model": "base", "prompt": "hi", "stream": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as stream:
                lines = stream.iter_lines()  # one iterator: a dropped one closes the response
                assert next(lines).startswith("data: {") and backend._in_flight == 1
                busy = httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=30)
                assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
                assert busy.json()["error"]["type"] == "rate_limit_error"
        finally:
            fake.mode = "ok"
        wait_for(lambda: backend._in_flight == 0, 10, "the dropped stream's place")
        assert chat(client_for(url), "hi", "base").choices[0].message.content == "fake answer"


def test_the_engine_gets_the_served_name_our_key_and_usage_for_streams(fake_engine, fake_front):
    fake = fake_engine[0]
    fake.seen.clear()
    chat(client_for(fake_front), PROMPTS["squad"], "auto", seed=7, stop=["\n"])
    list(chat(client_for(fake_front), "hi", "base", stream=True))
    first, second = (s["body"] for s in fake.seen)
    assert first["model"] == "squad" and first["seed"] == 7 and first["stop"] == ["\n"]
    assert first["messages"] == [{"role": "user", "content": PROMPTS["squad"]}] and first["temperature"] == 0
    assert second["model"] == "base" and second["stream_options"] == {"include_usage": True}
    assert {s["authorization"] for s in fake.seen} == {"Bearer k"}
    assert "lora" not in first and "cache_prompt" not in first  # openai kind: the model name is the adapter


def test_an_adapter_with_a_calibrated_decision_sends_its_logit_bias(served_zoo, fake_engine, tmp_path):
    """The engine gets the adapter's `logit_bias` (zoo.label_bias) with each request to it, and only to it."""
    import shutil

    fake, url = fake_engine
    zoo = Zoo(shutil.copytree(served_zoo.root, tmp_path / "zoo"))
    zoo.put(zoo.get("sst").with_(logit_bias={"16185": 0.8}))
    with front(zoo, url) as (front_url, _):
        fake.seen.clear()
        chat(client_for(front_url), PROMPTS["sst"], "sst")
        chat(client_for(front_url), PROMPTS["squad"], "squad")
    first, second = (s["body"] for s in fake.seen)
    assert first["model"] == "sst" and first["logit_bias"] == {"16185": 0.8}
    assert second["model"] == "squad" and "logit_bias" not in second


# llama-server ---------------------------------------------------------------------------------------------
def scales(body: dict) -> dict[int, float]:
    return {item["id"]: item["scale"] for item in body["lora"]}


def test_llama_server_gets_every_lora_scale_and_no_stale_prompt_cache(served_zoo, fake_engine):
    """Each request names every LoRA the engine holds (#28674: a missing one keeps its old scale), 1.0 for the
    routed adapter; `cache_prompt: false` exactly when the adapter differs from the previous request's (#26207)."""
    fake, url = fake_engine
    with front(served_zoo, url, upstream_kind="llama-server") as (front_url, _):
        client = client_for(front_url)
        fake.seen.clear()
        asked = [("auto", PROMPTS["sst"]), ("sst", "again"), ("squad", "q"), ("base", "b"), ("base", "b2"),
                 ("dsum", "d")]
        answers = [chat(client, prompt, model) for model, prompt in asked]
        assert [a.model for a in answers] == ["sst", "sst", "squad", "base", "base", "dsum"]
        assert answers[0].model_extra["zoo_route"]["route"] == "sentiment"
        assert {m.id for m in client.models.list().data} == {"auto", "base", *TASK_OF}  # `other` is not ours
    bodies = [s["body"] for s in fake.seen]
    assert {b["model"] for b in bodies} == {"base"}  # one model there: the LoRA scales pick the adapter
    assert [scales(b) for b in bodies] == [{0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0}, {0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0},
                                           {0: 0.0, 1: 1.0, 2: 0.0, 3: 0.0}, {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0},
                                           {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}, {0: 0.0, 1: 0.0, 2: 1.0, 3: 0.0}]
    assert [b.get("cache_prompt", True) for b in bodies] == [False, True, False, False, True, False]


def test_llama_server_lora_ids_from_the_gguf_export_names_file_and_streams(served_zoo, fake_engine, tmp_path):
    """The ids `zoo export gguf` wrote in its routes.json win over the engine's listing."""
    fake, url = fake_engine
    names = tmp_path / "routes.json"
    names.write_text(json.dumps({"engine": "llama-server", "base": {"gguf": "/x/base.gguf"},
                                 "adapters": {"squad": {"task": "qa", "lora_id": 0}, "sst": {"lora_id": 1}},
                                 "routes": {"qa": "squad", "sentiment": "sst", "none": None}}))
    with front(served_zoo, url, upstream_kind="llama-server", upstream_map=str(names)) as (front_url, _):
        fake.seen.clear()
        chunks = list(chat(client_for(front_url), PROMPTS["squad"], "auto", stream=True))
        assert {m.id for m in client_for(front_url).models.list().data} == {"auto", "base", "squad", "sst"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "fake answer"
    assert {c.model for c in chunks} == {"squad"}
    body = fake.seen[0]["body"]
    assert scales(body) == {0: 1.0, 1: 0.0} and body["cache_prompt"] is False
    with pytest.raises(ZooError, match="--upstream-kind llama-server"):
        from zoo.api.upstream_names import load_names

        load_names(served_zoo, str(names), "openai")


# configuration ------------------------------------------------------------------------------------------
def test_sglang_names_are_offered_under_the_adapters_own_names(served_zoo, tmp_path):
    """SGLang serves an adapter as model="BASE:NAME" (`zoo export vllm`'s routes_sglang.json): clients say NAME."""
    from zoo.api.upstream_names import load_names

    names_file = tmp_path / "routes_sglang.json"
    names_file.write_text(json.dumps({"engine": "sglang", "base": "smollm2", "adapters": ["smollm2:sst"],
                                      "routes": {"sentiment": "smollm2:sst", "none": "smollm2"}}))
    names = load_names(served_zoo, str(names_file), "openai")
    assert names.adapters == ["sst"] and names.for_route("sentiment") == "sst" and names.for_route("qa") == "base"
    assert names.served("sst") == "smollm2:sst" and names.served("base") == "smollm2"


@pytest.mark.parametrize("settings,message", [
    ({"upstream": "ftp://x"}, "base URL"), ({"upstream": "http://user:pw@host"}, "--upstream-key"),
    ({"upstream": "http://h", "upstream_kind": "ollama"}, "--upstream-kind"),
    ({"upstream_key": "k"}, "need --upstream")])
def test_bad_upstream_settings_are_refused(settings, message):
    with pytest.raises(ZooError, match=message):
        ServeConfig(**settings)


def test_a_bad_names_file_is_refused_before_serving(tmp_path, capsys):
    from zoo.cli import main

    names = tmp_path / "routes.json"
    for content in ("not json", json.dumps({"adapters": {"a": {"lora_id": "zero"}}}),
                    json.dumps({"routes": {"qa": "bad name!"}})):
        names.write_text(content)
        assert main(["serve", "--upstream", "http://127.0.0.1:9", "--upstream-map", str(names),
                     "--zoo", str(tmp_path)]) == 2
        assert str(names) in capsys.readouterr().err
