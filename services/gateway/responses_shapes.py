"""The Responses API's shapes (OpenAI's `POST /v1/responses`): pure functions, no I/O.

A request becomes the same `ChatRequested` a chat completion becomes (one turn, one
pipeline): `instructions` a system message, `input` items chat messages (a
`function_call` item an assistant message's tool call, a `function_call_output` item a
`tool` message), function `tools` and `tool_choice` OpenAI's chat ones. The conversation
of a stored response (its input and output, without its instructions, as OpenAI does it)
is what `previous_response_id` continues. Turn events become the `response` object and,
streamed, the `response.*` events in OpenAI's order: created, in_progress, then per output
item added / deltas / done, and completed (or failed, incomplete).

What is not supported (hosted tools, images, files, reasoning) is a 400 naming it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.context import RequestContext
from libs.errors import EnclaveError, ErrorInfo
from libs.events import (
    ChatMessage,
    ChatRequested,
    Delta,
    FunctionCall,
    FunctionDefinition,
    GenerationParams,
    NamedToolChoice,
    ToolCall,
    ToolChoice,
    ToolDefinition,
    ToolStep,
    Usage,
)
from libs.mcp_servers import server_of
from libs.tool_calls import ToolChoiceError
from libs.tool_calls import check as check_tools
from services.gateway.openai_shapes import MAX_NAME, MAX_TOKENS, MAX_TOOLS

MAX_ITEMS = 1_024


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def response_id(ctx: RequestContext) -> str:
    """`resp_<hex>`: the request id's random part, so the audit thread finds it."""
    return "resp_" + ctx.request_id.rsplit("-", 1)[-1]


def request_id_of(rid: str) -> str:
    """The request id of the turn that made response `rid` (`response_id`'s inverse)."""
    return "req-" + rid.removeprefix("resp_")


class FunctionTool(BaseModel):
    """A function tool in the Responses shape (flat, not under `function`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str


class ResponsesRequest(BaseModel):
    """Create a model response (OpenAI's Responses API)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=MAX_NAME)
    input: str | list[dict[str, Any]] = Field(default="")
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = Field(default=None, max_length=MAX_NAME)
    stream: bool = False
    background: bool = False
    store: bool = True
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    metadata: dict[str, str] | None = None
    user: str | None = Field(default=None, max_length=MAX_NAME)
    text: dict[str, Any] | None = None
    truncation: Literal["disabled", "auto"] | None = None
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None

    @field_validator("include")
    @classmethod
    def _include(cls, v: list[str] | None) -> list[str] | None:
        if v:
            raise ValueError(f"`{v[0]}` is not supported")
        return v

    @field_validator("reasoning")
    @classmethod
    def _reasoning(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v and any(value is not None for value in v.values()):
            raise ValueError("reasoning options are not supported by these models")
        return v

    def function_tools(self) -> list[FunctionTool]:
        out = []
        for i, raw in enumerate(self.tools or []):
            if raw.get("type") != "function":
                raise EnclaveError(
                    400,
                    f"Tools of type `{raw.get('type')}` are not supported; use function tools.",
                    "unsupported_parameter",
                    f"tools[{i}].type",
                )
            try:
                out.append(FunctionTool.model_validate(raw))
            except ValueError as exc:
                raise EnclaveError(
                    400, f"Invalid function tool: {exc}", "invalid_value", f"tools[{i}]"
                ) from None
        return out

    def response_format(self) -> dict[str, Any] | None:
        fmt = (self.text or {}).get("format")
        if fmt is None or fmt.get("type") == "text":
            return None
        if fmt.get("type") == "json_object":
            return {"type": "json_object"}
        if fmt.get("type") == "json_schema":
            spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
            return {"type": "json_schema", "json_schema": spec}
        raise EnclaveError(
            400,
            f"`text.format.type` `{fmt.get('type')}` is not supported.",
            "invalid_value",
            "text.format",
        )


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise EnclaveError(
            400, "`content` must be text or a list of parts.", "invalid_value", where
        )
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text"):
            raise EnclaveError(
                400,
                f"Content parts of type `{kind}` are not supported; use input_text.",
                "unsupported_parameter",
                f"{where}[{j}].type",
            )
        texts.append(str(part.get("text", "")))
    return "".join(texts)


@dataclass(frozen=True)
class ApprovalAnswer:
    """An `mcp_approval_response` input item: the decision on a call an agent waits on."""

    approval_id: str
    approve: bool
    reason: str | None = None


def approval_answer(items: str | list[dict[str, Any]]) -> ApprovalAnswer | None:
    """The request's `mcp_approval_response`, which must then be its only input item."""
    if isinstance(items, str):
        return None
    answers = [i for i in items if i.get("type") == "mcp_approval_response"]
    if not answers:
        return None
    if len(items) != 1:
        raise EnclaveError(
            400,
            "An `mcp_approval_response` must be the only input item.",
            "invalid_value",
            "input",
        )
    item = answers[0]
    if not isinstance(item.get("approval_request_id"), str) or not isinstance(
        item.get("approve"), bool
    ):
        raise EnclaveError(
            400,
            "An `mcp_approval_response` needs `approval_request_id` and `approve`.",
            "invalid_value",
            "input[0]",
        )
    reason = item.get("reason")
    return ApprovalAnswer(
        item["approval_request_id"], item["approve"], reason if isinstance(reason, str) else None
    )


def input_messages(items: str | list[dict[str, Any]]) -> list[ChatMessage]:
    """The `input` as chat messages; consecutive function calls share one assistant message."""
    if isinstance(items, str):
        return [ChatMessage(role="user", content=items)] if items else []
    if len(items) > MAX_ITEMS:
        raise EnclaveError(400, f"At most {MAX_ITEMS} input items.", "invalid_value", "input")
    out: list[ChatMessage] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise EnclaveError(400, f"Unknown role `{role}`.", "invalid_value", f"{where}.role")
            out.append(ChatMessage(role=role, content=_text_of(item.get("content"), where)))
        elif kind == "function_call":
            call = ToolCall(
                id=str(item.get("call_id") or ""),
                function=FunctionCall(
                    name=str(item.get("name") or ""), arguments=str(item.get("arguments") or "{}")
                ),
            )
            if not call.id or not call.function.name:
                raise EnclaveError(
                    400, "A function_call item needs `call_id` and `name`.", "invalid_value", where
                )
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                out.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.get("output")
            if not item.get("call_id"):
                raise EnclaveError(
                    400, "A function_call_output item needs `call_id`.", "invalid_value", where
                )
            text = output if isinstance(output, str) else _text_of(output, f"{where}.output")
            out.append(ChatMessage(role="tool", tool_call_id=str(item["call_id"]), content=text))
        else:
            raise EnclaveError(
                400,
                f"Input items of type `{kind}` are not supported.",
                "unsupported_parameter",
                f"{where}.type",
            )
    return out


def tool_choice(req: ResponsesRequest) -> ToolChoice | None:
    choice = req.tool_choice
    if isinstance(choice, FunctionChoice):
        return NamedToolChoice(function=NamedToolChoice.Name(name=choice.name))
    return choice


def to_event(
    req: ResponsesRequest, ctx: RequestContext, history: list[ChatMessage]
) -> tuple[ChatRequested, list[ChatMessage]]:
    """The turn, and the conversation to store for `previous_response_id` (no instructions)."""
    conversation = [*history, *input_messages(req.input)]
    if not conversation:
        raise EnclaveError(400, "`input` must not be empty.", "invalid_value", "input")
    messages = list(conversation)
    if req.instructions:
        messages.insert(0, ChatMessage(role="system", content=req.instructions))
    tools = [
        ToolDefinition(
            function=FunctionDefinition(
                name=t.name,
                description=t.description,
                parameters=t.parameters or {"type": "object", "properties": {}},
                strict=t.strict,
            )
        )
        for t in req.function_tools()
    ]
    params = GenerationParams(
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_output_tokens,
        user=req.user,
        response_format=req.response_format(),
        tools=tools or None,
        # Without tools, "auto" and "none" say nothing; any other choice is refused below.
        tool_choice=None if not tools and req.tool_choice in ("auto", "none") else tool_choice(req),
        parallel_tool_calls=req.parallel_tool_calls,
    )
    try:
        check_tools(params)
    except ToolChoiceError as exc:
        raise EnclaveError(400, str(exc), "invalid_value", exc.param) from None
    event = ChatRequested(ctx=ctx, model=req.model, messages=messages, params=params)
    return event, conversation


def _tool_json(req: ResponsesRequest) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "name": t.name,
            "description": t.description,
            "parameters": t.parameters or {"type": "object", "properties": {}},
            "strict": t.strict if t.strict is not None else False,
        }
        for t in req.function_tools()
    ]


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": content if status == "completed" else [],
    }


def call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def error_json(error: ErrorInfo) -> dict[str, Any]:
    """A failed response's `error`: OpenAI's codes are a closed list, so ours goes in
    `type` and the message says what happened."""
    code = "rate_limit_exceeded" if error.status == 429 else "server_error"
    return {"code": code, "message": error.message, "param": error.param, "type": error.code}


SERVER_LABEL = "enclave"  # the `server_label` of tools the platform runs itself


def step_item(step: ToolStep) -> dict[str, Any]:
    """A server-side tool an agent called (`mcp_call`, the platform as its server, or the
    tenant's MCP server for its `mcp__<server>__<tool>`), or the call it waits to have
    approved (`mcp_approval_request`, id = the approval's)."""
    label = server_of(step.name) or SERVER_LABEL
    if step.approval_id is not None:
        return {
            "type": "mcp_approval_request",
            "id": step.approval_id,
            "name": step.name,
            "arguments": step.arguments,
            "server_label": label,
        }
    failed = step.outcome != "ok"
    return {
        "type": "mcp_call",
        "id": "mcp_" + step.call_id.removeprefix("call_"),
        "name": step.name,
        "arguments": step.arguments,
        "server_label": label,
        "output": step.output,
        "error": (
            {"type": "mcp_tool_execution_error", "content": step.output, "outcome": step.outcome}
            if failed
            else None
        ),
        "status": "failed" if failed else "completed",
    }


Status = Literal["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]


def response_json(
    rid: str,
    req: ResponsesRequest,
    created_at: float,
    status: Status,
    output: list[dict[str, Any]] | None = None,
    usage: Usage | None = None,
    error: ErrorInfo | None = None,
    incomplete: str | None = None,
) -> dict[str, Any]:
    """OpenAI's `response` object."""
    choice = req.tool_choice
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": req.background,
        "error": None if error is None else error_json(error),
        "incomplete_details": None if incomplete is None else {"reason": incomplete},
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "model": req.model,
        "output": output or [],
        "parallel_tool_calls": req.parallel_tool_calls
        if req.parallel_tool_calls is not None
        else True,
        "previous_response_id": req.previous_response_id,
        "store": req.store,
        "temperature": req.temperature,
        "text": {"format": (req.text or {}).get("format") or {"type": "text"}},
        "tool_choice": (
            choice.model_dump() if isinstance(choice, FunctionChoice) else (choice or "auto")
        ),
        "tools": _tool_json(req),
        "top_p": req.top_p,
        "truncation": req.truncation or "disabled",
        "usage": None if usage is None else usage_json(usage),
        "user": req.user,
    }


class Builder:
    """Turns a turn's deltas (choice 0) into output items, and, streamed, into events.

    `add` returns the events the deltas produce; `finish` those that close the open items.
    `output` is the items so far; `conversation` what the model said, as chat messages.
    """

    def __init__(self) -> None:
        self.output: list[dict[str, Any]] = []
        self.text = ""
        self.finish_reason: str | None = None
        self._message: dict[str, Any] | None = None  # the open message item
        self._calls: dict[int, dict[str, Any]] = {}  # open function_call items by call index
        self.seq = 0

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, it in enumerate(self.output) if it is item)

    def _open_message(self) -> list[dict[str, Any]]:
        item = message_item(new_id("msg"), "", "in_progress")
        self._message = item
        self.output.append(item)
        idx = self._index(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self.event("response.output_item.added", output_index=idx, item=dict(item)),
            self.event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=idx,
                content_index=0,
                part=part,
            ),
        ]

    def _close_message(self) -> list[dict[str, Any]]:
        item = self._message
        if item is None:
            return []
        self._message = None
        idx = self._index(item)
        text = item.pop("_text", "")
        done = message_item(item["id"], text)
        self.output[idx] = done
        part = done["content"][0]
        return [
            self.event(
                "response.output_text.done",
                item_id=done["id"],
                output_index=idx,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self.event(
                "response.content_part.done",
                item_id=done["id"],
                output_index=idx,
                content_index=0,
                part=part,
            ),
            self.event("response.output_item.done", output_index=idx, item=done),
        ]

    def add(self, deltas: list[Delta]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for d in deltas:
            if d.index != 0:
                continue
            if d.content:
                if self._message is None:
                    events += self._open_message()
                item = self._message
                assert item is not None
                item["_text"] = item.get("_text", "") + d.content
                self.text += d.content
                events.append(
                    self.event(
                        "response.output_text.delta",
                        item_id=item["id"],
                        output_index=self._index(item),
                        content_index=0,
                        delta=d.content,
                        logprobs=[],
                    )
                )
            for piece in d.tool_calls or []:
                call = self._calls.get(piece.index)
                if call is None:
                    events += self._close_message()
                    call = call_item(
                        new_id("fc"),
                        piece.id or new_id("call"),
                        piece.name or "",
                        "",
                        "in_progress",
                    )
                    self._calls[piece.index] = call
                    self.output.append(call)
                    events.append(
                        self.event(
                            "response.output_item.added",
                            output_index=self._index(call),
                            item=dict(call),
                        )
                    )
                if piece.arguments:
                    call["arguments"] += piece.arguments
                    events.append(
                        self.event(
                            "response.function_call_arguments.delta",
                            item_id=call["id"],
                            output_index=self._index(call),
                            delta=piece.arguments,
                        )
                    )
            if d.finish_reason:
                self.finish_reason = d.finish_reason
        return events

    def steps(self, steps: list[ToolStep] | None) -> list[dict[str, Any]]:
        """Server-side tool calls an agent made, each a whole output item."""
        events: list[dict[str, Any]] = []
        for step in steps or []:
            events += self._close_message()
            item = step_item(step)
            self.output.append(item)
            idx = len(self.output) - 1
            events.append(self.event("response.output_item.added", output_index=idx, item=item))
            if item["type"] == "mcp_call":
                kind = "failed" if item["status"] == "failed" else "completed"
                events.append(
                    self.event(f"response.mcp_call.{kind}", item_id=item["id"], output_index=idx)
                )
            events.append(self.event("response.output_item.done", output_index=idx, item=item))
        return events

    def finish(self) -> list[dict[str, Any]]:
        events = self._close_message()
        for call in self._calls.values():
            call["status"] = "completed"
            idx = self._index(call)
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=call["id"],
                    output_index=idx,
                    name=call["name"],
                    arguments=call["arguments"],
                )
            )
            events.append(self.event("response.output_item.done", output_index=idx, item=call))
        self._calls = {}
        return events

    def conversation(self) -> list[ChatMessage]:
        """What the model said, as the chat messages a continuation starts from."""
        calls = [
            ToolCall(
                id=it["call_id"], function=FunctionCall(name=it["name"], arguments=it["arguments"])
            )
            for it in self.output
            if it["type"] == "function_call"
        ]
        if not self.text and not calls:
            return [ChatMessage(role="assistant", content="")]
        return [ChatMessage(role="assistant", content=self.text or None, tool_calls=calls or None)]

    def incomplete(self) -> str | None:
        if self.finish_reason == "length":
            return "max_output_tokens"
        if self.finish_reason == "content_filter":
            return "content_filter"
        return None


def now() -> float:
    return float(int(time.time()))
