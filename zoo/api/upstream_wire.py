"""What crosses the wire between `zoo serve --upstream` and its engine: the engine's failures mapped to errors a
client can act on (OpenAI's error JSON, never the engine's internals or its address), its server-sent events
read line by line, and a streamed response that always gives the engine's connection back."""

from __future__ import annotations

import json
import logging

from fastapi.responses import StreamingResponse

from zoo.api.config import ServeConfig
from zoo.api.protocol import ApiError
from zoo.errors import printable

log = logging.getLogger("zoo.serve")
MAX_ANSWER_BYTES = 8 << 20  # an engine's answer (or one SSE line) larger than this is garbage


def upstream_error(status: int, message: str, code: str, retry: bool = False) -> ApiError:
    return ApiError(status, message, type="server_error", code=code, headers={"Retry-After": "5"} if retry else None)


def garbage(what: str) -> ApiError:
    return upstream_error(502, f"the upstream engine answered {what}: is --upstream an OpenAI-compatible server?",
                          "upstream_bad_answer")


def timed_out(config: ServeConfig) -> ApiError:
    return upstream_error(504, f"no answer from the upstream engine within {config.timeout_s:g} s: ask for fewer "
                               "tokens or retry", "upstream_timeout")


def transport_error(e: Exception, config: ServeConfig) -> ApiError:
    """An httpx failure -> the status a client can act on (the details go to the server log only)."""
    import httpx

    log.warning("zoo serve: upstream %s: %s: %s", config.upstream, type(e).__name__, e)
    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
        return upstream_error(503, "the upstream engine is unreachable: retry once it is up", "upstream_unavailable",
                              retry=True)
    if isinstance(e, (httpx.TimeoutException, TimeoutError)):
        return timed_out(config)
    return upstream_error(502, "the upstream engine broke the connection mid-answer: retry", "upstream_error")


def status_error(status: int, body: bytes, model: str) -> ApiError:
    """An engine's refusal -> ours: the client's own mistakes keep their status, the engine's become 5xx."""
    try:
        message = printable(str(json.loads(body)["error"]["message"]), 200)
    except Exception:  # no OpenAI error JSON: say only the status
        message = ""
    said = f": {message}" if message else ""
    if status in (400, 413, 422):
        return ApiError(status, f"the upstream engine refused the request{said}", code="upstream_refused")
    if status in (401, 403):
        return upstream_error(502, "the upstream engine refused this server's key: check --upstream-key",
                              "upstream_auth")
    if status == 404:
        return upstream_error(502, f"the upstream engine does not serve {model!r}: check --upstream-map{said}",
                              "upstream_model_missing")
    if status == 429:
        return ApiError(429, "the upstream engine is busy: retry shortly", type="rate_limit_error",
                        code="queue_full", headers={"Retry-After": "1"})
    if status == 503:
        return upstream_error(503, f"the upstream engine is not ready{said}", "upstream_unavailable", retry=True)
    return upstream_error(502, f"the upstream engine failed (HTTP {status}){said}", "upstream_error")


class ClosingStream(StreamingResponse):
    """A stream that always gives its upstream response back, even when its client left before the first chunk
    (then its body iterator never starts, and no `finally` in it would run)."""

    def __init__(self, content, on_close, **kw):
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        import anyio

        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # a client that left cancels us: close the engine's side anyway
                await self.on_close()


def sse_data(line: str):
    """One line of an SSE stream: a chunk (dict), "[DONE]", or None for what carries no data (blank lines,
    comments, `event:`/`id:`/`retry:` fields). llama-server's `error: {...}` lines are errors."""
    field_name, _, value = line.partition(":")
    value = value.strip()
    if not line.strip() or field_name in ("", "event", "id", "retry"):
        return None
    if field_name not in ("data", "error"):
        raise garbage("a stream line that is not server-sent events")
    if value == "[DONE]" and field_name == "data":
        return "[DONE]"
    try:
        chunk = json.loads(value)
    except json.JSONDecodeError:
        raise garbage("an event that is not JSON") from None
    if not isinstance(chunk, dict):
        raise garbage("an event that is not a JSON object")
    return {"error": chunk.get("error", chunk)} if field_name == "error" else chunk
