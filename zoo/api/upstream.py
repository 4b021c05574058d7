"""`zoo serve --upstream URL`: the same API as local serving, answered by another engine (vLLM, SGLang,
llama-server, another `zoo serve`). The router is the only model in this process: it picks the route here, and
the request goes on with `model=<served name>` (openai kind) or, for llama-server, one model with a per-request
vector of LoRA scales.

llama-server's two pitfalls are handled here: an adapter missing from a request's `lora` list keeps the scale
it had (llama.cpp #28674), so every adapter's scale is sent each time; and the prompt cache is reused across
adapters (#26207), so `cache_prompt: false` goes with a request whose adapter differs from the previous one's.

Upstream trouble reaches clients as OpenAI error JSON, never a hang: 503 when the engine cannot be reached,
504 when it does not answer within `--timeout-s`, 502 when it answers garbage or fails (5xx), and 502 naming
`--upstream-key` / `--upstream-map` when it refuses our key or does not serve a model the names promise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from zoo.api.config import ServeConfig
from zoo.api.metrics import Metrics
from zoo.api.protocol import Answer, ApiError, ModelList, Route, SamplingRequest, Usage, new_id
from zoo.api.serving import AUTO, BASE, POLL_S, check_request, model_cards, route_headers, unknown_model
from zoo.api.upstream_names import Names, load_names, load_router, lora_ids
from zoo.api.upstream_wire import (MAX_ANSWER_BYTES, ClosingStream, garbage, sse_data, status_error, timed_out,
                                   transport_error, upstream_error)
from zoo.errors import ZooError, printable

log = logging.getLogger("zoo.serve")
CONNECT_S = 5.0  # a refused or unroutable engine is reported within this, whatever --timeout-s says
PROBE_S = 3.0  # /health's look at the engine
DEFAULT_NEW_TOKENS = 128
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass
class UpstreamCall:
    """A request on its way to the engine: the model clients see, `auto`'s route, the body sent on."""
    model: str
    route: Route | None
    endpoint: str
    payload: dict
    deadline: float
    arrived: float = field(default_factory=time.monotonic)
    response: object = None  # the engine's open response (a stream's, from `start`)
    released: bool = False
    first_token: bool = False

    def headers(self) -> dict[str, str]:
        return route_headers(self.route)


class UpstreamBackend:
    """The `Backend` (zoo.api.backend) of `zoo serve --upstream`."""

    def __init__(self, zoo, config: ServeConfig, metrics: Metrics | None = None):
        self.zoo, self.config, self.metrics = zoo, config, metrics or Metrics()
        self.kind = config.upstream_kind
        self.names: Names | None = None
        self.router = None
        self.load_failed = False
        self.client = None
        self._loading: asyncio.Task | None = None
        self._route_lock = threading.Lock()
        self._in_flight = 0
        self._lora_ids: list[int] = []  # every LoRA the engine holds (llama-server): all get a scale each time
        self._last_adapter: str | None = None  # the previous request's (llama-server's prompt cache, #26207)
        self._new_tokens: dict[str, int] = {}  # default max_tokens by model
        self._biases: dict[str, dict | None] = {}  # logit_bias by model

    # lifecycle -----------------------------------------------------------------------------------------
    async def open(self) -> None:
        import httpx

        key = self.config.upstream_key
        self.client = httpx.AsyncClient(
            base_url=self.config.upstream.rstrip("/").removesuffix("/v1"), trust_env=False,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(self.config.timeout_s, connect=min(CONNECT_S, self.config.timeout_s)),
            limits=httpx.Limits(max_connections=self.config.max_batch,
                                max_keepalive_connections=self.config.max_batch))
        self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            names = await run_in_threadpool(load_names, self.zoo, self.config.upstream_map, self.kind)
            self.router = await run_in_threadpool(load_router, self.zoo)
        except Exception:  # the server log says why; /health says failed
            log.exception("zoo serve: reading the zoo's router and names failed")
            self.load_failed = True
            return
        self._lora_ids = sorted(set((names.lora or {}).values()))
        self.names = names
        log.info("zoo serve: routing to %s (%s) with adapters %s", self.config.upstream, self.kind,
                 ", ".join(names.adapters) or "(none)")

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        if self.client is not None:
            await self.client.aclose()

    async def health(self) -> tuple[int, dict]:
        if self.names is None:
            return 503, {"status": "failed" if self.load_failed else "loading"}
        import httpx

        try:
            up = (await self.client.get("/v1/models", timeout=PROBE_S)).status_code == 200
        except httpx.PoolTimeout:  # every connection is busy with an answer: the engine is up
            up = True
        except Exception:  # any failure to get an answer: not ready
            up = False
        if not up:
            return 503, {"status": "upstream_unavailable"}
        return 200, {"status": "ok", "adapters": self.names.adapters, "upstream": self.kind}

    async def models(self, created: int) -> ModelList:
        names = await self._ready()
        return model_cards(names.adapters, names.base, self.router is not None, created)

    # requests ------------------------------------------------------------------------------------------
    async def _ready(self) -> Names:
        if self.names is None:
            why = "failed to start (see the server log)" if self.load_failed else "is still starting"
            raise ApiError(503, f"the server {why}: retry once /health answers 200", type="server_error",
                           code="not_ready", headers={"Retry-After": "5"})
        if self.kind == "llama-server" and self.names.lora is None:
            await self._discover_lora(self.names)
        return self.names

    async def _discover_lora(self, names: Names) -> None:
        """llama-server without a names file: its adapters' indexes from `GET /lora-adapters`."""
        listing = await self._get_json("/lora-adapters")
        found = lora_ids(listing, names.adapters)
        self._lora_ids = sorted({i["id"] for i in listing if isinstance(i, dict) and type(i.get("id")) is int})
        names.adapters = [a for a in names.adapters if a in found]
        names.lora = found
        log.info("zoo serve: llama-server LoRAs %s", found)

    async def _get_json(self, path: str):
        deadline = time.monotonic() + min(self.config.timeout_s, 30.0)
        call = UpstreamCall(model=path, route=None, endpoint="", payload={}, deadline=deadline)
        return await self._within(call, self._fetch(call, "GET", path))

    async def start(self, body: SamplingRequest, endpoint: str, text: str, max_tokens: int | None,
                    messages: list[dict] | None = None) -> UpstreamCall:
        """Check a request like local serving does, route it, and (for a stream) open the engine's answer so
        that its refusal still gets an HTTP status."""
        names = await self._ready()
        check_request(self.config, body, text, max_tokens)
        model, route = await self._resolve(body.model, text)
        payload = self._payload(body, names, model, text, messages, max_tokens)
        self._admit()
        if self.kind == "llama-server":  # once admitted: the engine will see this request next
            payload.update(self._lora_fields(names, model))
        call = UpstreamCall(model, route, endpoint, payload, time.monotonic() + self.config.timeout_s)
        self.metrics.requests.labels(model, endpoint).inc()
        if body.stream:
            try:
                call.response = await self._within(call, self._send(call, "POST", PATHS[endpoint]))
            except BaseException:
                await self._release(call)
                raise
        return call

    async def _resolve(self, model: str, text: str) -> tuple[str, Route | None]:
        if model == AUTO and self.router is not None:
            decision = await run_in_threadpool(self._route, text)
            return self.names.for_route(decision["route"]), Route(route=decision["route"], probs=decision["probs"])
        self.names.served(model)  # 404 for a model the engine does not serve
        if model == AUTO:
            raise unknown_model(model)
        return model, None

    def _route(self, text: str) -> dict:
        with self._route_lock:
            return self.router.route([text])[0]

    def _payload(self, body: SamplingRequest, names: Names, model: str, text: str, messages: list[dict] | None,
                 max_tokens: int | None) -> dict:
        served = names.base if self.kind == "llama-server" else names.served(model)  # llama-server: one model
        out = {"model": served, "max_tokens": max_tokens or self._default_tokens(model),
               "temperature": body.temperature, "top_p": body.top_p, "stream": body.stream}
        out.update({"messages": messages} if messages is not None else {"prompt": text})
        if body.seed is not None:
            out["seed"] = body.seed
        if body.stops():
            out["stop"] = list(body.stops())
        bias = self._logit_bias(model)  # the adapter's calibrated decision, as the zoo's own serving applies it
        if bias:
            out["logit_bias"] = bias
        if body.stream:
            out["stream_options"] = {"include_usage": True}  # for the token metrics; dropped unless asked for
        return out

    def _lora_fields(self, names: Names, model: str) -> dict:
        """Every LoRA's scale (#28674), and no reuse of a prompt cache made under another adapter (#26207)."""
        chosen = names.lora.get(model) if model != BASE else None
        fields = {"lora": [{"id": i, "scale": 1.0 if i == chosen else 0.0} for i in self._lora_ids]}
        if model != self._last_adapter:
            fields["cache_prompt"] = False
        self._last_adapter = model
        return fields

    def _logit_bias(self, model: str) -> dict | None:
        """A zoo adapter's `logit_bias` (`zoo.label_bias`), None for the base or a name the zoo does not hold."""
        if model not in self._biases:
            try:
                entry = self.zoo.entries().get(model) if model != BASE else None
            except ZooError:  # no manifest: an engine serving names only
                entry = None
            self._biases[model] = entry.logit_bias if entry else None
        return self._biases[model]

    def _default_tokens(self, model: str) -> int:
        """As local serving: the adapter's task says how long its answers are."""
        if model not in self._new_tokens:
            tokens = DEFAULT_NEW_TOKENS
            if model != BASE:
                from tasks import spec_for_adapter

                try:
                    tokens = spec_for_adapter(self.zoo, model).max_new_tokens
                except Exception:  # not a zoo adapter (a served name only), or no task: the general default
                    pass
            self._new_tokens[model] = min(tokens, self.config.max_tokens)
        return self._new_tokens[model]

    def _admit(self) -> None:
        if self._in_flight >= self.config.max_batch + self.config.max_queue:
            raise ApiError(429, "the server is busy: too many requests in flight, retry shortly",
                           type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
        self._in_flight += 1
        self._count_in_flight()

    async def _release(self, call: UpstreamCall) -> None:
        if call.released:
            return
        call.released = True
        self._in_flight -= 1
        self._count_in_flight()
        if call.response is not None:
            await call.response.aclose()

    def _count_in_flight(self) -> None:
        self.metrics.running.set(min(self._in_flight, self.config.max_batch))
        self.metrics.queue.set(max(0, self._in_flight - self.config.max_batch))

    # talking to the engine -----------------------------------------------------------------------------
    async def _within(self, call: UpstreamCall, work, request=None):
        """`work`'s result, or 504 at the call's deadline (and 499 when the waiting client left)."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                left = call.deadline - time.monotonic()
                if left <= 0:
                    raise timed_out(self.config)
                done, _ = await asyncio.wait({task}, timeout=min(left, POLL_S) if request is not None else left)
                if done:
                    return task.result()
                if request is not None and await request.is_disconnected():
                    raise ApiError(499, "the client closed the connection", code="client_closed")
        finally:
            task.cancel()

    async def _send(self, call: UpstreamCall, method: str, path: str):
        """The engine's response with a 200 status, its body not read yet; any other status is mapped."""
        import httpx

        try:
            response = await self.client.send(self.client.build_request(method, path, json=call.payload or None),
                                              stream=True)
        except httpx.HTTPError as e:
            raise transport_error(e, self.config) from None
        if response.status_code != 200:
            try:
                body = await self._read(response, 64 << 10)
            except ApiError:
                body = b""
            finally:
                await response.aclose()
            raise status_error(response.status_code, body, call.payload.get("model", call.model))
        return response

    async def _read(self, response, limit: int = MAX_ANSWER_BYTES) -> bytes:
        import httpx

        out = bytearray()
        try:
            async for piece in response.aiter_bytes():
                out += piece
                if len(out) > limit:
                    raise garbage(f"more than {limit} bytes")
        except httpx.HTTPError as e:
            raise transport_error(e, self.config) from None
        return bytes(out)

    async def _fetch(self, call: UpstreamCall, method: str, path: str):
        """The engine's whole JSON answer."""
        response = await self._send(call, method, path)
        try:
            body = await self._read(response)
        finally:
            await response.aclose()
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise garbage("something that is not JSON") from None

    # answers -------------------------------------------------------------------------------------------
    async def whole_answer(self, call: UpstreamCall, kind: str, choice, request) -> Answer:
        try:
            data = await self._within(call, self._fetch(call, "POST", PATHS[call.endpoint]), request)
        finally:
            await self._release(call)
        choices = data.get("choices") if isinstance(data, dict) else None
        part, shape = ("message", dict) if kind == "chat.completion" else ("text", str)
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
                or not isinstance(choices[0].get(part), shape):
            raise garbage(f"JSON without a {part} in its choices")
        usage = self._count_usage(call, data.get("usage"))
        elapsed = time.monotonic() - call.arrived
        self.metrics.ttft.observe(elapsed)
        self.metrics.latency.observe(elapsed)
        return Answer(id=printable(str(data.get("id") or new_id(kind)), 100), object=kind, model=call.model,
                      choices=[{**choices[0], "index": 0}], usage=usage, zoo_route=call.route)

    def _count_usage(self, call: UpstreamCall, raw) -> Usage | None:
        try:
            usage = Usage.model_validate(raw)
        except Exception:  # no usage, or not OpenAI's: nothing to count
            return None
        self.metrics.prompt_tokens.labels(call.model).inc(max(usage.prompt_tokens, 0))
        self.metrics.completion_tokens.labels(call.model).inc(max(usage.completion_tokens, 0))
        return usage

    def stream_response(self, call: UpstreamCall, kind: str, choice, include_usage: bool) -> StreamingResponse:
        return ClosingStream(self._chunks(call, include_usage), lambda: self._release(call),
                             media_type="text/event-stream", headers=call.headers())

    async def _chunks(self, call: UpstreamCall, include_usage: bool):
        """The engine's SSE chunks, re-labelled with the model clients named (or `auto` chose) and the route."""
        lines = call.response.aiter_lines()
        try:
            while True:
                line = await self._within(call, self._next_line(lines))
                if line is None:
                    raise garbage("a stream that ended before `data: [DONE]`")
                chunk = sse_data(line)
                if chunk == "[DONE]":
                    self.metrics.latency.observe(time.monotonic() - call.arrived)
                    yield "data: [DONE]\n\n"
                    return
                out = self._relabel(call, chunk, include_usage) if chunk is not None else None
                if out:
                    yield out
        except ApiError as e:
            self.metrics.errors.labels(str(e.status)).inc()
            yield f"data: {json.dumps(e.body())}\n\n"

    async def _next_line(self, lines) -> str | None:
        import httpx

        try:
            line = await anext(lines)
        except StopAsyncIteration:
            return None
        except httpx.HTTPError as e:
            raise transport_error(e, self.config) from None
        if len(line) > MAX_ANSWER_BYTES:
            raise garbage(f"an event over {MAX_ANSWER_BYTES} bytes")
        return line

    def _relabel(self, call: UpstreamCall, chunk: dict, include_usage: bool) -> str | None:
        if "error" in chunk:
            error = chunk["error"]
            message = printable(str(error.get("message", error) if isinstance(error, dict) else error), 200)
            raise upstream_error(502, f"the upstream engine failed mid-answer: {message}", "upstream_error")
        if not isinstance(chunk.get("choices"), list):
            raise garbage("an event without choices")
        if chunk.get("usage") is not None:
            self._count_usage(call, chunk["usage"])
            if not include_usage:
                chunk.pop("usage")
                if not chunk["choices"]:
                    return None
        if not call.first_token and any(has_text(c) for c in chunk["choices"]):
            call.first_token = True
            self.metrics.ttft.observe(time.monotonic() - call.arrived)
        chunk["model"] = call.model
        if call.route is not None:
            chunk["zoo_route"] = call.route.model_dump()
        return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"


def has_text(choice) -> bool:
    """Whether a streamed choice (chat delta or completion text) carries generated text."""
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    return bool(delta.get("content") if isinstance(delta, dict) else choice.get("text"))
