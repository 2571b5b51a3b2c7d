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
    # Sent once, first: which runtime replica and worker serve the turn.
    served_by: dict[str, str] | None = None


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


# -- guardrails (request/reply guardrails.input / guardrails.output) --


class GuardrailCheck(BaseModel):
    """agent_runtime, gateway or memory -> guardrails: screen texts under the tenant's policy.

    direction "input": the messages a model is about to see (PII actions, injection on user
    messages, indirect injection on tool messages, topic control on the last user message).
    direction "context": retrieved RAG chunks or tool results, screened for indirect injection
    and PII, one score per text. direction "output": a window of model output (secrets, PII
    re-check, content policy); its verdict's entities carry their replacements.
    """

    v: Literal[1] = 1
    ctx: RequestContext
    direction: Literal["input", "output", "context"] = "input"
    messages: list[ChatMessage] = Field(default_factory=list)
    # An agent's policy below the tenant's (the HTTP check calls it `policy`).
    agent: str | None = None
    # Pseudonyms already handed out in this request (placeholder -> real value), so that a
    # value seen again gets the same placeholder.
    pseudonyms: dict[str, str] = Field(default_factory=dict)


class GuardrailEntity(BaseModel):
    type: str
    start: int
    end: int
    score: float
    # Which of the check's messages the span is in, what the policy does with it and the
    # text that replaces it (empty for "allow").
    message: int = 0
    action: str = "redact"
    replacement: str = ""


class GuardrailVerdict(BaseModel):
    """guardrails -> caller: the decision, the rewritten texts, and why."""

    v: Literal[1] = 1
    allowed: bool
    # The messages' contents after the policy's actions (same order as the check's).
    texts: list[str] = Field(default_factory=list)
    entities: list[GuardrailEntity] = Field(default_factory=list)
    injection_score: float = 0.0
    # Per message: the injection score (0 where the message was not screened for it).
    scores: list[float] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    # The rule that blocked, e.g. "injection.threshold" or "pii.entities.US_SSN".
    rule: str | None = None
    policy_version: str = ""
    # placeholder -> real value; it lives only for the request and is never stored.
    pseudonyms: dict[str, str] = Field(default_factory=dict)
    error: ErrorInfo | None = None


class GuardrailVerdictRecorded(BaseModel):
    """guardrails -> audit (JetStream audit.<tenant>.guardrails): one verdict, without values."""

    v: Literal[1] = 1
    kind: Literal["guardrails.verdict"] = "guardrails.verdict"
    ctx: RequestContext
    direction: str
    allowed: bool
    rule: str | None = None
    reasons: list[str] = Field(default_factory=list)
    # entity type -> count (never the values)
    entities: dict[str, int] = Field(default_factory=dict)
    injection_score: float = 0.0
    policy_version: str
    agent: str | None = None
    at: float = Field(default_factory=time.time)
