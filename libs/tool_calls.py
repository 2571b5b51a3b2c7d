"""Tool calling, decided in pure code (no I/O): which calls a request allows, how the tools
reach a model whose chat template knows none, and how the model's text becomes calls.

- `tool_choice` "none" (or no `tools`): the model sees no tools and calls none.
- "auto": the model sees the tools in its system message and answers in the Hermes format,
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (SmolLM2-135M-Instruct's GGUF
  template is plain ChatML with no tool support, so the tools travel as text, and the
  format is the one its instruction data used). `parse_output` / `ToolCallStream` find the
  calls in the text; a block that is not a call of a known tool stays text.
- "required" or a named function: the answer is forced. `forced_format` is the JSON Schema
  of one call (`{"name": <const>, "arguments": <the function's parameters>}`, `anyOf` the
  allowed functions), which the worker turns into a llama.cpp grammar like any
  `json_schema` response format; the whole answer is then that call.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from libs.events import (
    ChatMessage,
    FunctionCall,
    GenerationParams,
    NamedToolChoice,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDefinition,
)

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.DOTALL)

Mode = Literal["none", "auto", "forced"]


class ToolChoiceError(ValueError):
    """A request whose tools and tool_choice do not fit together (a 400 naming `param`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def mode(params: GenerationParams) -> Mode:
    if not params.tools or params.tool_choice == "none":
        return "none"
    if params.tool_choice is None or params.tool_choice == "auto":
        return "auto"
    return "forced"


def check(params: GenerationParams) -> None:
    """Raise `ToolChoiceError` where the request's tool fields contradict each other."""
    names = [t.function.name for t in params.tools or []]
    if len(set(names)) != len(names):
        raise ToolChoiceError("Function names in `tools` must be unique.", "tools")
    choice = params.tool_choice
    if choice is not None and choice != "none" and not names:
        raise ToolChoiceError(
            "`tool_choice` is only allowed when `tools` are given.", "tool_choice"
        )
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise ToolChoiceError(
            f"`tool_choice` names the function `{choice.function.name}`, which is not in `tools`.",
            "tool_choice",
        )
    if params.tools and params.n > 1:
        raise ToolChoiceError("`n` above 1 is not supported together with `tools`.", "n")
    if params.tools and params.response_format and params.response_format.get("type") != "text":
        raise ToolChoiceError(
            "`response_format` cannot be combined with `tools` here.", "response_format"
        )


def allowed(tools: list[ToolDefinition], choice: ToolChoice | None) -> list[ToolDefinition]:
    """The functions an answer may call under `choice`."""
    if choice == "none":
        return []
    if isinstance(choice, NamedToolChoice):
        return [t for t in tools if t.function.name == choice.function.name]
    return list(tools)


def _call_schema(tool: ToolDefinition) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.function.name},
            "arguments": tool.function.parameters or {"type": "object"},
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def forced_schema(tools: list[ToolDefinition], choice: ToolChoice | None) -> dict[str, Any]:
    """The JSON Schema of one call of an allowed function."""
    options = [_call_schema(t) for t in allowed(tools, choice)]
    if not options:
        raise ToolChoiceError("No function in `tools` may be called.", "tool_choice")
    return options[0] if len(options) == 1 else {"anyOf": options}


def forced_format(params: GenerationParams) -> dict[str, Any] | None:
    """The `json_schema` response format a forced answer is generated under, or None."""
    if mode(params) != "forced":
        return None
    schema = forced_schema(params.tools or [], params.tool_choice)
    return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}


def tools_prompt(tools: list[ToolDefinition]) -> str:
    """The system text that shows a model the functions it may call (the Hermes format)."""
    listed = "\n".join(
        json.dumps(t.model_dump(exclude_none=True), separators=(",", ":")) for t in tools
    )
    return (
        "You may call one or more functions to help with the user's request. "
        f"The functions are listed in <tools></tools>:\n<tools>\n{listed}\n</tools>\n"
        "To call a function, answer with a JSON object with its name and arguments "
        f'inside {OPEN}{CLOSE} tags:\n{OPEN}\n{{"name": <function-name>, '
        f'"arguments": <args-json-object>}}\n{CLOSE}'
    )


def _as_text(call: ToolCall) -> str:
    try:
        arguments: Any = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        arguments = call.function.arguments
    body = json.dumps({"name": call.function.name, "arguments": arguments})
    return f"{OPEN}\n{body}\n{CLOSE}"


def prompt_messages(messages: list[ChatMessage], params: GenerationParams) -> list[ChatMessage]:
    """The conversation as a template without tool support renders it: the tools in the
    system message, earlier calls as the model's own `<tool_call>` text, tool results in
    `<tool_response>` tags (ChatML passes the `tool` role through as it is)."""
    out: list[ChatMessage] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            text = "\n".join(_as_text(c) for c in m.tool_calls)
            content = f"{m.content}\n{text}" if m.content else text
            out.append(ChatMessage(role="assistant", content=content))
        elif m.role == "tool":
            out.append(
                ChatMessage(
                    role="tool", content=f"<tool_response>\n{m.content or ''}\n</tool_response>"
                )
            )
        else:
            out.append(ChatMessage(role=m.role, content=m.content or "", name=m.name))
    tools = allowed(params.tools or [], params.tool_choice)
    if not tools:
        return out
    prompt = tools_prompt(tools)
    if out and out[0].role in ("system", "developer"):
        return [ChatMessage(role="system", content=f"{out[0].content}\n\n{prompt}"), *out[1:]]
    return [ChatMessage(role="system", content=prompt), *out]


def _call(raw: str, names: set[str], make_id: Callable[[], str]) -> ToolCall | None:
    """The call a block of model text makes, or None when it makes none."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as JSON text
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(
        id=make_id(),
        function=FunctionCall(name=data["name"], arguments=json.dumps(arguments)),
    )


@dataclass
class Parsed:
    """A finished answer: its text, and the calls it made."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)

    @property
    def finish_reason(self) -> str | None:
        return "tool_calls" if self.calls else None


def parse_output(
    text: str, params: GenerationParams, make_id: Callable[[], str] = new_call_id
) -> Parsed:
    """The calls in a whole answer generated under `params`."""
    stream = ToolCallStream(params, make_id)
    head = stream.feed(text)
    tail = stream.finish()
    return Parsed(head.content + tail.content, head.calls + tail.calls)


class ToolCallStream:
    """Finds calls in an answer as it streams: text goes on as soon as it cannot be the
    start of a `<tool_call>` block; a call goes out once its block is closed (or the answer
    ends inside it). Under a forced choice the whole answer is one call, known at the end."""

    def __init__(self, params: GenerationParams, make_id: Callable[[], str] = new_call_id) -> None:
        self.mode = mode(params)
        self.names = {t.function.name for t in allowed(params.tools or [], params.tool_choice)}
        self.parallel = params.parallel_tool_calls is not False
        self.make_id = make_id
        self.buffer = ""
        self.calls = 0

    def _keep(self, call: ToolCall | None) -> list[ToolCall]:
        if call is None or (self.calls and not self.parallel):
            return []
        self.calls += 1
        return [call]

    def feed(self, text: str) -> Parsed:
        if self.mode == "none":
            return Parsed(text)
        self.buffer += text
        if self.mode == "forced":
            return Parsed("")
        content: list[str] = []
        calls: list[ToolCall] = []
        while True:
            start = self.buffer.find(OPEN)
            if start < 0:
                # Hold back what may be the beginning of a tag.
                keep = _partial_suffix(self.buffer, OPEN)
                content.append(self.buffer[: len(self.buffer) - keep])
                self.buffer = self.buffer[len(self.buffer) - keep :]
                break
            end = self.buffer.find(CLOSE, start)
            if end < 0:
                content.append(self.buffer[:start])
                self.buffer = self.buffer[start:]
                break
            content.append(self.buffer[:start])
            block = self.buffer[start : end + len(CLOSE)]
            call = _call(self.buffer[start + len(OPEN) : end].strip(), self.names, self.make_id)
            if call is None:
                content.append(block)
            else:
                calls.extend(self._keep(call))
            self.buffer = self.buffer[end + len(CLOSE) :]
        return Parsed("".join(content), calls)

    def finish(self) -> Parsed:
        rest, self.buffer = self.buffer, ""
        if self.mode == "none":
            return Parsed(rest)
        if self.mode == "forced":
            call = _call(rest.strip(), self.names, self.make_id)
            return Parsed("", self._keep(call)) if call else Parsed(rest)
        if rest.startswith(OPEN):  # the answer ended inside a block: a call if it parses
            call = _call(rest[len(OPEN) :].strip(), self.names, self.make_id)
            if call is not None:
                return Parsed("", self._keep(call))
        return Parsed(rest)


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that begins `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def call_deltas(calls: Iterable[ToolCall], first: int) -> list[ToolCallDelta]:
    """Calls as OpenAI streams them: the first piece of each names it (id, name, empty
    arguments), the next carries its arguments. `first`: the index of the first call."""
    out: list[ToolCallDelta] = []
    for i, call in enumerate(calls, start=first):
        out.append(ToolCallDelta(index=i, id=call.id, name=call.function.name))
        out.append(ToolCallDelta(index=i, arguments=call.function.arguments))
    return out


class CallCollector:
    """Puts streamed call pieces back together into whole calls (a client's side)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, pieces: Iterable[ToolCallDelta]) -> None:
        for p in pieces:
            call = self._calls.setdefault(p.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = p.id or call["id"]
            call["name"] = p.name or call["name"]
            call["arguments"] += p.arguments

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=c["id"], function=FunctionCall(name=c["name"], arguments=c["arguments"]))
            for _, c in sorted(self._calls.items())
        ]


def delta_json(piece: ToolCallDelta) -> dict[str, Any]:
    """One piece in OpenAI's `delta.tool_calls[]` shape."""
    out: dict[str, Any] = {"index": piece.index}
    function: dict[str, str] = {"arguments": piece.arguments}
    if piece.id is not None:
        out["id"] = piece.id
        out["type"] = "function"
    if piece.name is not None:
        function["name"] = piece.name
    out["function"] = function
    return out
