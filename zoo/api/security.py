"""What keeps `zoo serve` safe to expose: a bearer key on `/v1`, and a bound on request bodies that holds even
when a client lies about (or omits) its Content-Length."""

from __future__ import annotations

import hmac
import json

from fastapi import Request

from zoo.api.protocol import ApiError


def require_key(expected: str | None):
    """A FastAPI dependency: with a key configured, every call must send `Authorization: Bearer <key>`."""

    async def check(request: Request) -> None:
        if not expected:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                           code="invalid_api_key")

    return check


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 before the app reads it whole (by its declared length,
    or as it streams in)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, self._message(), code="request_too_large")
            return message

        await self.app(scope, bounded, send)

    def _message(self) -> str:
        return f"request body over {self.limit} bytes: send a shorter prompt"

    async def _refuse(self, send) -> None:
        body = json.dumps(ApiError(413, self._message(), code="request_too_large").body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
