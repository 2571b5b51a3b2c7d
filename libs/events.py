"""Typed, versioned event models of the platform: every message on the bus is one of these.

Each model carries `v`, its schema version; a consumer rejects versions it does not know.
Field names follow OpenAI's where an OpenAI concept exists.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from libs.context import RequestContext
from libs.errors import ErrorInfo

EVENTS_VERSION = 1


class ChatMessage(BaseModel):
    role: str
    content: str | None = None
    name: str | None = None


class GenerationParams(BaseModel):
    """Sampling and output controls, as the OpenAI API names them."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = None
    # {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}
    response_format: dict[str, Any] | None = None
    user: str | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ChatRequested(BaseModel):
    """gateway -> agent_runtime (JetStream work queue): run one turn."""

    v: Literal[1] = 1
    ctx: RequestContext
    model: str
    kind: Literal["chat", "completion"] = "chat"
    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    stream: bool = True
    created: int = Field(default_factory=lambda: int(time.time()))
    # Where the runtime sends the turn's events: chat.stream.<gateway>.<request_id>.
    reply_subject: str = ""


class Delta(BaseModel):
    """A piece of one choice's output."""

    index: int = 0
    content: str = ""
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class TurnEvent(BaseModel):
    """worker -> agent_runtime and agent_runtime -> gateway: what the turn produced so far.

    A message may carry several deltas (they are coalesced under load); `usage`, `error`
    and `done` come once, at the end.
    """

    v: Literal[1] = 1
    deltas: list[Delta] = Field(default_factory=list)
    usage: Usage | None = None
    error: ErrorInfo | None = None
    done: bool = False


class GenerateRequest(BaseModel):
    """agent_runtime -> inference_router -> worker: generate and stream to `deltas_subject`."""

    v: Literal[1] = 1
    ctx: RequestContext
    model: str
    kind: Literal["chat", "completion"] = "chat"
    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    deltas_subject: str
    # Filled in by the router from the registry.
    pool: str | None = None
    adapter: str | None = None
    timeout_s: float | None = None


class GenerateAccepted(BaseModel):
    """Reply to a GenerateRequest: a worker took it, or why none did."""

    v: Literal[1] = 1
    accepted: bool
    worker: str | None = None
    error: ErrorInfo | None = None
    # The pool's limit on the wait for each token, set by the router from the registry.
    timeout_s: float | None = None


class EmbedRequest(BaseModel):
    v: Literal[1] = 1
    ctx: RequestContext
    model: str
    inputs: list[str]
    pool: str | None = None


class EmbedReply(BaseModel):
    v: Literal[1] = 1
    vectors: list[list[float]] = Field(default_factory=list)
    prompt_tokens: int = 0
    error: ErrorInfo | None = None


class ModelInfo(BaseModel):
    id: str
    kind: Literal["chat", "completion", "embedding"]
    pool: str
    owned_by: str = "enclave"
    created: int = 0


class ModelsRequest(BaseModel):
    v: Literal[1] = 1
    tenant: str | None = None


class ModelsReply(BaseModel):
    v: Literal[1] = 1
    models: list[ModelInfo] = Field(default_factory=list)
