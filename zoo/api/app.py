"""The HTTP routes of `zoo serve` (FastAPI): wiring only; a backend (`backend.py`: the local scheduler, or an
upstream engine) answers, and every error leaves as OpenAI's error JSON with its status, never a traceback."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from zoo.api.backend import Backend, LocalBackend
from zoo.api.config import ServeConfig
from zoo.api.protocol import ApiError, ChatRequest, CompletionRequest, chat_choice, completion_choice
from zoo.api.scheduler import Scheduler
from zoo.api.security import BodyLimit, require_key
from zoo.errors import printable

log = logging.getLogger("zoo.serve")


def create_app(backend: Backend | Scheduler, config: ServeConfig) -> FastAPI:
    """The app; its lifespan opens the backend (a scheduler is served locally), which loads in the background:
    /health says when."""
    if isinstance(backend, Scheduler):
        backend = LocalBackend(backend, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.open()
        yield
        await backend.close()

    app = FastAPI(title="Adapter Zoo", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    add_error_handlers(app, backend)
    add_service_routes(app, backend)
    app.include_router(v1_routes(backend, config))
    return app


def add_service_routes(app: FastAPI, backend: Backend) -> None:
    @app.get("/health")
    async def health():
        status, body = await backend.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics():
        return Response(backend.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def v1_routes(backend: Backend, config: ServeConfig) -> APIRouter:
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key(config.api_key))])
    started = int(time.time())

    @v1.get("/models")
    async def models():
        return await backend.models(started)

    @v1.post("/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        call = await backend.start(body, "chat", body.user_text(), body.max_completion_tokens or body.max_tokens,
                                   messages)
        return await answer(call, body, "chat.completion", chat_choice, request)

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        call = await backend.start(body, "completions", body.text(), body.max_tokens)
        return await answer(call, body, "text_completion", completion_choice, request)

    async def answer(call, body, kind: str, choice, request: Request):
        if body.stream:
            return backend.stream_response(call, kind, choice,
                                           bool(body.stream_options and body.stream_options.include_usage))
        done = await backend.whole_answer(call, kind, choice, request)
        return JSONResponse(done.model_dump(exclude_none=True), headers=call.headers())

    return v1


def add_error_handlers(app: FastAPI, backend: Backend) -> None:
    def reply(error: ApiError) -> JSONResponse:
        backend.metrics.errors.labels(str(error.status)).inc()
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return reply(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return reply(ApiError(400, "the request body is not valid JSON"))
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return reply(ApiError(422, printable(f"{where}: {first.get('msg', 'invalid value')}", 300)))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        code = "not_found" if e.status_code == 404 else None
        return reply(ApiError(e.status_code, printable(str(e.detail), 300), code=code))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        log.exception("zoo serve: internal error")
        return reply(ApiError(500, "internal server error (see the server log)", type="server_error"))
