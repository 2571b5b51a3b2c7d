"""OpenAI request validation and response shapes: pure functions, no I/O.

Requests are validated into pydantic models; a validation failure becomes a 400 in
OpenAI's error shape (OpenAI never answers 422). Turn events from the bus become
chat.completion / text_completion objects and their streamed chunks.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import (
    ChatMessage,
    ChatRequested,
    Delta,
    GenerationParams,
    MemoryOptions,
    RagOptions,
    ToolCall,
    ToolChoice,
    ToolDefinition,
    TurnEvent,
    Usage,
)
from libs.model_context import MAX_TOKENS
from libs.rbac import Credential, end_user
from libs.tool_calls import CallCollector, ToolChoiceError, delta_json
from libs.tool_calls import check as check_tools

M = TypeVar("M", bound=BaseModel)
# Admission bounds: what one request may ask, whatever its model. max_tokens is further
# bounded by the model's context window (libs/model_context.py, `ContextWindows.check`
# once the model is known), and a worker stops a generation at its model's context.
MAX_N = 4
MAX_STOP = 4
MAX_MESSAGES = 1_024
MAX_NAME = 256  # model ids, user ids, stop sequences
MAX_EMBEDDING_INPUTS = 2_048
MAX_TOOLS = 128  # functions in `tools`, calls in one assistant message


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=MAX_NAME)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=MAX_NAME)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(len(s) > MAX_NAME for s in ([v] if isinstance(v, str) else v or [])):
            raise ValueError(f"a stop sequence has at most {MAX_NAME} characters")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class RequestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, max_length=MAX_NAME)

    def text(self) -> str | None:
        if self.content is None or isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text":
                raise ValueError(f"content part type `{part.type}` is not supported")
        return "".join(p.text or "" for p in self.content)


class ChatCompletionRequest(_Request):
    messages: list[RequestMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    # Extensions: retrieval from a vector store, and the user's memories.
    rag: RagOptions | None = None
    memory: MemoryOptions | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("response_format")
    @classmethod
    def _format(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        kind = v.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError("type must be one of text, json_object, json_schema")
        if kind == "json_schema":
            spec = v.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise ValueError("json_schema.schema must be a JSON Schema object")
        return v


class CompletionRequest(_Request):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return v


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=MAX_NAME)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = Field(default=None, max_length=MAX_NAME)

    def inputs(self) -> list[str]:
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        if not all(items):
            raise ValueError("input must not contain empty strings")
        return items


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnclaveError(
            400, f"We could not parse the JSON body of your request: {exc}", "invalid_json"
        ) from None


def validate(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise EnclaveError(400, "The request body must be a JSON object.", "invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise EnclaveError(
            400, f"Invalid value for `{param}`: {err['msg']}", "invalid_value", param
        ) from None


def output_param(req: ChatCompletionRequest | CompletionRequest) -> str:
    """The request's field that bounds its answer (`max_completion_tokens` wins)."""
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens:
        return "max_completion_tokens"
    return "max_tokens"


def chat_event(req: ChatCompletionRequest, ctx: RequestContext) -> ChatRequested:
    try:
        messages = [
            ChatMessage(
                role=m.role,
                content=m.text(),
                name=m.name,
                tool_calls=m.tool_calls,
                tool_call_id=m.tool_call_id,
            )
            for m in req.messages
        ]
    except ValueError as exc:
        raise EnclaveError(400, str(exc), "invalid_value", "messages") from None
    fmt = req.response_format
    if fmt is not None and fmt.get("type") == "text":
        fmt = None
    params = GenerationParams(
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        stop=req.stop_list(),
        seed=req.seed,
        n=req.n,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        response_format=fmt,
        user=speaks_for(ctx, req.user),
        tools=req.tools,
        tool_choice=req.tool_choice,
        parallel_tool_calls=req.parallel_tool_calls,
    )
    try:
        check_tools(params)
    except ToolChoiceError as exc:
        raise EnclaveError(400, str(exc), "invalid_value", exc.param) from None
    return ChatRequested(
        ctx=ctx, model=req.model, messages=messages, params=params, rag=req.rag, memory=req.memory
    )


def speaks_for(ctx: RequestContext, asserted: str | None) -> str | None:
    """The end user of a request (the OpenAI `user` field, which unlocks `user:` ACLs on
    documents): as asserted for admin and developer credentials; a user-role credential's
    own subject (naming anyone else is 403); none for the others (libs.rbac.end_user)."""
    return end_user(Credential(ctx.actor, ctx.tenant, frozenset({ctx.role})), asserted)


def context_extras(ev: TurnEvent) -> dict[str, Any]:
    """Extension fields of a response that used retrieval: `citations`, `memories` and
    `grounding`."""
    extras: dict[str, Any] = {}
    if ev.citations is not None:
        extras["citations"] = [c.model_dump() for c in ev.citations]
    if ev.memories is not None:
        extras["memories"] = [m.model_dump() for m in ev.memories]
    if ev.grounding is not None:
        extras["grounding"] = [g.model_dump() for g in ev.grounding]
    return extras


def completion_event(req: CompletionRequest, ctx: RequestContext) -> ChatRequested:
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    params = GenerationParams(
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_tokens or 16,
        stop=req.stop_list(),
        seed=req.seed,
        n=req.n,
        logprobs=req.logprobs is not None,
        top_logprobs=req.logprobs,
        user=speaks_for(ctx, req.user),
    )
    return ChatRequested(ctx=ctx, model=req.model, kind="completion", prompt=prompt, params=params)


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


class ChatStreamShaper:
    """Turns the deltas of one turn into OpenAI chunk objects (chat or text completion)."""

    def __init__(self, event: ChatRequested, include_usage: bool) -> None:
        self.kind = event.kind
        self.id = ("chatcmpl-" if event.kind == "chat" else "cmpl-") + event.ctx.request_id
        self.created = event.created
        self.model = event.model
        self.include_usage = include_usage
        self._started: set[int] = set()
        # Citations and memories ride on the first chunk after they are known.
        self.extras: dict[str, Any] = {}
        self.fingerprint: str | None = None  # the serving adapter's digest, once named

    def _base(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        base: dict[str, Any] = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
        }
        if self.kind == "chat":
            base["system_fingerprint"] = self.fingerprint
        return base

    def chunks(self, deltas: list[Delta]) -> list[dict[str, Any]]:
        out = []
        for d in deltas:
            if d.adapter_digest:
                self.fingerprint = d.adapter_digest
            chunk = self._base()
            if self.kind == "chat":
                delta: dict[str, Any] = {"content": d.content}
                if d.index not in self._started:
                    self._started.add(d.index)
                    delta = {"role": "assistant", "content": d.content}
                elif d.finish_reason and not d.content:
                    delta = {}
                if d.tool_calls:
                    delta["tool_calls"] = [delta_json(p) for p in d.tool_calls]
                    if not d.content:
                        delta["content"] = None
                logprobs = {"content": d.logprobs, "refusal": None} if d.logprobs else None
                choice = {
                    "index": d.index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": d.finish_reason,
                }
            else:
                choice = {
                    "index": d.index,
                    "text": d.content,
                    "logprobs": _legacy_logprobs(d.logprobs),
                    "finish_reason": d.finish_reason,
                }
            chunk["choices"] = [choice]
            if self.include_usage:
                chunk["usage"] = None
            if self.extras:
                chunk.update(self.extras)
                self.extras = {}
            out.append(chunk)
        return out

    def extras_chunk(self) -> dict[str, Any] | None:
        """Extension fields no delta carried (the last event had none), in a chunk of
        their own with no choices, like the usage chunk."""
        if not self.extras:
            return None
        chunk = {**self._base(), "choices": [], **self.extras}
        if self.include_usage:
            chunk["usage"] = None
        self.extras = {}
        return chunk

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        chunk = self._base()
        chunk["choices"] = []
        chunk["usage"] = usage_dict(usage)
        return chunk


class Accumulator:
    """Collects a whole turn for a non-streamed response."""

    def __init__(self, n: int) -> None:
        self.text = [""] * n
        self.logprobs: list[list[dict[str, Any]] | None] = [None] * n
        self.finish: list[str | None] = [None] * n
        self.extras: dict[str, Any] = {}
        self.calls = [CallCollector() for _ in range(n)]

    def add(self, deltas: list[Delta]) -> None:
        for d in deltas:
            if d.index >= len(self.text):
                continue
            self.text[d.index] += d.content
            if d.tool_calls:
                self.calls[d.index].add(d.tool_calls)
            if d.logprobs:
                self.logprobs[d.index] = (self.logprobs[d.index] or []) + d.logprobs
            if d.finish_reason:
                self.finish[d.index] = d.finish_reason

    def _message(self, index: int, text: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        calls = self.calls[index].calls()
        if calls:
            message["tool_calls"] = [c.model_dump() for c in calls]
            message["content"] = text or None
        return message

    def response(self, event: ChatRequested, usage: Usage) -> dict[str, Any]:
        if event.kind == "chat":
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": self._message(i, text),
                    "logprobs": (
                        {"content": self.logprobs[i], "refusal": None}
                        if event.params.logprobs
                        else None
                    ),
                    "finish_reason": self.finish[i] or "stop",
                }
                for i, text in enumerate(self.text)
            ]
            return {
                "id": "chatcmpl-" + event.ctx.request_id,
                "object": "chat.completion",
                "created": event.created,
                "model": event.model,
                "system_fingerprint": usage.adapter_digest,
                "choices": choices,
                "usage": usage_dict(usage),
                **self.extras,
            }
        return {
            "id": "cmpl-" + event.ctx.request_id,
            "object": "text_completion",
            "created": event.created,
            "model": event.model,
            "choices": [
                {
                    "index": i,
                    "text": text,
                    "logprobs": _legacy_logprobs(self.logprobs[i]),
                    "finish_reason": self.finish[i] or "stop",
                }
                for i, text in enumerate(self.text)
            ],
            "usage": usage_dict(usage),
        }


def _legacy_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The /v1/completions logprobs shape, from per-token chat-style entries."""
    if not entries:
        return None
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            {t["token"]: t["logprob"] for t in e.get("top_logprobs", [])} for e in entries
        ],
        "text_offset": [],
    }
