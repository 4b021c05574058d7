"""OpenAI requests -> scheduler jobs -> OpenAI answers (whole, or streamed as server-sent events).

Everything a request can get wrong is checked here, before it takes a place in the queue: the model (404), the
prompt's size in tokens (413), `max_tokens` (400). A job is then followed until its last token, the client leaves
(its row is freed) or its time runs out (504).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import PurePath

from starlette.concurrency import run_in_threadpool

from zoo.api.config import ServeConfig
from zoo.api.protocol import Answer, ApiError, ModelCard, ModelList, Route, SamplingRequest, Usage, new_id
from zoo.api.scheduler import Job, Scheduler
from zoo.serving.engine import Sampling
from zoo.serving.runtime import NONE

AUTO, BASE = "auto", "base"
POLL_S = 1.0  # how often a waiting non-streamed request checks that its client is still there


@dataclass
class Call:
    """A request on its way: the job, the model that answers (an adapter or `base`), and the route for `auto`."""
    job: Job
    model: str
    route: Route | None
    prompt_tokens: int

    def headers(self) -> dict[str, str]:
        return route_headers(self.route)


def route_headers(route: Route | None) -> dict[str, str]:
    """`auto`'s decision as the `x-zoo-route` header (none for a model named by the client)."""
    return {"x-zoo-route": json.dumps(route.model_dump(), separators=(",", ":"))} if route else {}


def require_ready(scheduler: Scheduler) -> None:
    if not scheduler.ready:
        why = "failed to load (see the server log)" if scheduler.load_failed else "is still loading"
        raise ApiError(503, f"the model {why}: retry once /health answers 200", type="server_error",
                       code="not_ready", headers={"Retry-After": "5"})


def base_name(scheduler: Scheduler) -> str:
    """The base's id as clients see it: a name, never a local path."""
    return PurePath(scheduler.runtime.loaded.ref.id).name


def model_list(scheduler: Scheduler, created: int) -> ModelList:
    require_ready(scheduler)
    return model_cards(scheduler.runtime.adapters, base_name(scheduler), scheduler.has_router, created)


def model_cards(adapters: list[str], base: str, has_router: bool, created: int) -> ModelList:
    """`auto` (with a router), `base` and the adapters, each with the base as parent, as vLLM lists LoRAs."""
    names = ([AUTO] if has_router else []) + [BASE] + adapters
    return ModelList(data=[ModelCard(id=n, created=created, root=base if n in (AUTO, BASE) else n,
                                     parent=None if n == BASE else base) for n in names])


async def resolve(scheduler: Scheduler, model: str, text: str) -> tuple[str, Route | None]:
    """The adapter that answers `model` (`none` for the base) and, for `auto`, the router's decision."""
    if model == AUTO and scheduler.has_router:
        decision = await run_in_threadpool(scheduler.route, text)
        return decision["adapter"], Route(route=decision["route"], probs=decision["probs"])
    if model == BASE:
        return NONE, None
    if model in scheduler.runtime.adapters:
        return model, None
    raise unknown_model(model)


def unknown_model(model: str) -> ApiError:
    hint = "; `auto` needs a router: run `zoo route --train`" if model == AUTO else ""
    return ApiError(404, f"model {model!r} does not exist: GET /v1/models lists the served ones{hint}",
                    code="model_not_found")


def check_request(config: ServeConfig, body: SamplingRequest, text: str, max_tokens: int | None) -> None:
    """What any backend refuses before it spends anything on a request."""
    if not text.strip():
        raise ApiError(400, "empty prompt: give some text to answer")
    if body.n != 1:
        raise ApiError(400, "only n=1 is supported: send one request per answer")
    if max_tokens is not None and max_tokens > config.max_tokens:
        raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {config.max_tokens}")
    if len(body.stops()) > 4:
        raise ApiError(400, "at most 4 stop sequences")


def sampling_for(scheduler: Scheduler, config: ServeConfig, body: SamplingRequest, adapter: str,
                 max_tokens: int | None, prompt_tokens: int) -> Sampling:
    runtime = scheduler.runtime
    max_tokens = max_tokens or min(runtime.default_new_tokens(adapter), config.max_tokens)
    context = runtime.context_tokens
    if prompt_tokens + max_tokens > context:
        raise ApiError(400, f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) is over the model's "
                            f"context of {context} tokens: shorten one of them")
    return Sampling(max_tokens, body.temperature, body.top_p, body.seed, body.stops())


async def start(scheduler: Scheduler, config: ServeConfig, body: SamplingRequest, endpoint: str, text: str,
                max_tokens: int | None, messages: list[dict] | None = None) -> Call:
    """Check a request and queue it."""
    require_ready(scheduler)
    check_request(config, body, text, max_tokens)
    adapter, route = await resolve(scheduler, body.model, text)
    ids = await run_in_threadpool(scheduler.encode, messages, None if messages else text)
    if len(ids) > config.max_prompt_tokens:
        raise ApiError(413, f"prompt of {len(ids)} tokens is over this server's limit of {config.max_prompt_tokens}",
                       code="prompt_too_long")
    sampling = sampling_for(scheduler, config, body, adapter, max_tokens, len(ids))
    label = BASE if adapter == NONE else adapter
    job = scheduler.submit(ids, adapter, sampling, label)
    scheduler.metrics.requests.labels(label, endpoint).inc()
    return Call(job, label, route, len(ids))


async def events(scheduler: Scheduler, call: Call, request=None):
    """The job's `(kind, value)` events until it is done; cancels it when its time runs out or its client left."""
    deadline = call.job.arrived + scheduler.config.timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            kind, value = await asyncio.wait_for(call.job.events.get(), min(left, POLL_S) if request else left)
        except TimeoutError:
            if request is not None and time.monotonic() < deadline and not await request.is_disconnected():
                continue
            scheduler.cancel(call.job)
            raise ApiError(504, f"no answer within {scheduler.config.timeout_s:g} s: ask for fewer tokens or retry",
                           type="server_error", code="timeout") from None
        if kind == "error":
            raise value
        yield kind, value
        if kind == "done":
            return


def usage(call: Call) -> Usage:
    done = len(call.job.row.tokens)
    return Usage(prompt_tokens=call.prompt_tokens, completion_tokens=done, total_tokens=call.prompt_tokens + done)


async def whole_answer(scheduler: Scheduler, call: Call, kind: str, choice, request) -> Answer:
    """Wait for the whole answer (the row leaves if the client does)."""
    text, finish = [], None
    try:
        async for event, value in events(scheduler, call, request):
            if event == "text":
                text.append(value)
            else:
                finish = value
    finally:
        scheduler.cancel(call.job)
    return Answer(id=new_id(kind), object=kind, model=call.model, choices=[choice("".join(text), finish, False)],
                  usage=usage(call), zoo_route=call.route)


async def stream_answer(scheduler: Scheduler, call: Call, kind: str, choice, include_usage: bool):
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`; an error ends the stream with an
    error event. When the client leaves, the server stops iterating this and the row leaves the batch."""
    answer_id, chunk = new_id(kind), f"{kind}.chunk" if kind == "chat.completion" else kind

    def sse(choices: list[dict], **extra) -> str:
        data = Answer(id=answer_id, object=chunk, model=call.model, choices=choices, zoo_route=call.route, **extra)
        return f"data: {data.model_dump_json(exclude_none=True)}\n\n"

    try:
        yield sse([choice("", None, True, first=True)])
        async for event, value in events(scheduler, call):
            yield sse([choice(value, None, True)] if event == "text" else [choice(None, value, True)])
        if include_usage:
            yield sse([], usage=usage(call))
        yield "data: [DONE]\n\n"
    except ApiError as e:
        yield f"data: {json.dumps(e.body())}\n\n"
    finally:
        scheduler.cancel(call.job)
