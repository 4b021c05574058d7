"""What answers a request behind the one app: the local scheduler (`LocalBackend`: the base in this process,
continuous batching) or another engine (`zoo.api.upstream.UpstreamBackend`: the router here, the model there).

The routes in `app.py` only speak to this interface, so both serve the same API: same request checks, same error
JSON, same `auto` routing with `zoo_route` and `x-zoo-route`, same `/health` and `/metrics`.
"""

from __future__ import annotations

from typing import Protocol

from fastapi.responses import StreamingResponse

from zoo.api import serving
from zoo.api.config import ServeConfig
from zoo.api.metrics import Metrics
from zoo.api.protocol import Answer, ModelList, SamplingRequest
from zoo.api.scheduler import Scheduler


class Backend(Protocol):
    metrics: Metrics

    async def open(self) -> None:
        """Start loading (in the background: `/health` says when it is ready)."""

    async def close(self) -> None: ...

    async def health(self) -> tuple[int, dict]:
        """(HTTP status, body) of `/health`: 200 once requests can be answered, 503 before or when failed."""

    async def models(self, created: int) -> ModelList: ...

    async def start(self, body: SamplingRequest, endpoint: str, text: str, max_tokens: int | None,
                    messages: list[dict] | None = None):
        """Check a request and set it going; the returned call has `headers()` (the route, for `auto`)."""

    async def whole_answer(self, call, kind: str, choice, request) -> Answer: ...

    def stream_response(self, call, kind: str, choice, include_usage: bool) -> StreamingResponse: ...


class LocalBackend:
    """The zoo's base and adapters in this process, batched by the scheduler."""

    def __init__(self, scheduler: Scheduler, config: ServeConfig):
        self.scheduler, self.config, self.metrics = scheduler, config, scheduler.metrics

    async def open(self) -> None:
        self.scheduler.start()

    async def close(self) -> None:
        self.scheduler.stop()

    async def health(self) -> tuple[int, dict]:
        if self.scheduler.ready:
            return 200, {"status": "ok", "adapters": self.scheduler.runtime.adapters}
        return 503, {"status": "failed" if self.scheduler.load_failed else "loading"}

    async def models(self, created: int) -> ModelList:
        return serving.model_list(self.scheduler, created)

    async def start(self, body, endpoint, text, max_tokens, messages=None) -> serving.Call:
        return await serving.start(self.scheduler, self.config, body, endpoint, text, max_tokens, messages)

    async def whole_answer(self, call, kind, choice, request) -> Answer:
        return await serving.whole_answer(self.scheduler, call, kind, choice, request)

    def stream_response(self, call, kind, choice, include_usage) -> StreamingResponse:
        return StreamingResponse(serving.stream_answer(self.scheduler, call, kind, choice, include_usage),
                                 media_type="text/event-stream", headers=call.headers())
