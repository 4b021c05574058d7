"""The wire format of `zoo serve`: OpenAI's request and response bodies as pydantic models, and its error JSON.

Only what the server implements is accepted with meaning; fields OpenAI clients send by default that change
nothing here (`user`, `logprobs: false`, ...) are ignored, as vLLM ignores them. `n` must be 1.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error the client caused or can act on, with its HTTP status and OpenAI's `type` and `code`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}


# requests ------------------------------------------------------------------------------------------------
class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """What both endpoints share: the model to answer and how to sample."""
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def user_text(self) -> str:
        """The text the router reads: the last user message."""
        return next((m.text() for m in reversed(self.messages) if m.role == "user"), self.messages[-1].text())


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "only one prompt per request is supported: send one request per prompt")
        return self.prompt[0]


# responses -----------------------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Route(BaseModel):
    """Where `auto` sent the prompt: the router's route and every route's probability."""
    route: str
    probs: dict[str, float]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "adapter-zoo"
    root: str
    parent: str | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Answer(BaseModel):
    """One finished or partial answer, in whichever endpoint's shape `object` names."""
    id: str
    object: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[dict]
    usage: Usage | None = None
    zoo_route: Route | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_choice(text: str | None, finish_reason: str | None, stream: bool, first: bool = False) -> dict:
    """A chat choice: the whole message, or a streamed delta (the first one carries the role)."""
    if not stream:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                "logprobs": None}
    delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
    return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


def completion_choice(text: str | None, finish_reason: str | None, stream: bool, first: bool = False) -> dict:
    return {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
