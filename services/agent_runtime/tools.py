"""Server-side tools: what they are, and how one call runs (pure over `ToolPorts`).

A tool declares its arguments as a pydantic model (a built-in tool) or as a JSON Schema
(`SchemaTool`: an MCP server's tool, its `inputSchema`); that schema is what the model is
shown (`ToolDefinition`), and a call's arguments are validated against it before the tool
runs. Arguments that are not JSON, or do not fit, go back to the model as a tool
error (outcome `invalid_arguments`) it can correct, never a crash; so does a tool that
fails (`ToolFailed`, outcome `error`). Every call is audited: the tool, a digest of its
arguments (never the arguments), the outcome and the duration.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from libs.audit import digest, new_event
from libs.context import RequestContext
from libs.events import (
    AuditEvent,
    ChatMessage,
    FunctionDefinition,
    MemoryStoreRequested,
    SandboxExecReply,
    SandboxExecRequest,
    ToolCall,
    ToolDefinition,
)

# What one result may put into the model's context (a small model has 2048 tokens in all).
MAX_RESULT_CHARS = 6_000
AUDIT_KIND = "runtime"
TOOL_CALL_ACTION = "tool.call"

Outcome = Literal["ok", "invalid_arguments", "unknown_tool", "error", "rejected"]


class ToolFailed(Exception):
    """A tool could not do what it was asked: the message goes back to the model."""


class ToolPorts(Protocol):
    """What the built-in tools may ask of the platform."""

    async def sandbox(self, request: SandboxExecRequest) -> SandboxExecReply: ...

    async def search(
        self, ctx: RequestContext, vector_store_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """OpenAI's vector store search: the request body in, the results page out."""
        ...

    async def remember(self, event: MemoryStoreRequested) -> None: ...

    async def audit(self, event: AuditEvent) -> None: ...


@dataclass(frozen=True)
class ToolContext:
    """Who a call runs for, and what the agent lets its tools reach."""

    ctx: RequestContext
    user: str = ""
    vector_store_ids: tuple[str, ...] = ()
    agent: str | None = None
    # The skills the agent may load; None: every skill of the tenant.
    skills: tuple[str, ...] | None = None


class Tool(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def arguments(self) -> type[BaseModel]:
        """The pydantic model of the arguments."""
        ...

    async def run(self, args: Any, call: ToolContext, ports: ToolPorts) -> str:
        """The result as the model will read it; raises `ToolFailed`."""
        ...


class SchemaTool(Protocol):
    """A tool whose arguments are a JSON Schema (an MCP server's tool)."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON Schema of the arguments, as the model is shown it."""
        ...

    def invalid(self, args: Any) -> str | None:
        """Why `args` do not fit the schema, or None when they do."""
        ...

    async def run(self, args: Any, call: ToolContext, ports: ToolPorts) -> str:
        """The result as the model will read it; raises `ToolFailed`."""
        ...


AnyTool = Tool | SchemaTool


def _schema_tool(tool: AnyTool) -> SchemaTool | None:
    return tool if hasattr(tool, "parameters") else None  # type: ignore[return-value]


def definition(tool: AnyTool) -> ToolDefinition:
    """The tool as the model sees it: its arguments' JSON Schema."""
    by_schema = _schema_tool(tool)
    if by_schema is not None:
        schema = by_schema.parameters
    else:
        schema = tool.arguments.model_json_schema()  # type: ignore[union-attr]
        schema.pop("title", None)
    return ToolDefinition(
        function=FunctionDefinition(name=tool.name, description=tool.description, parameters=schema)
    )


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    name: str
    content: str
    outcome: Outcome
    duration_ms: int = 0

    def message(self) -> ChatMessage:
        return ChatMessage(role="tool", tool_call_id=self.call_id, content=self.content)


def _why(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
    )


def clip(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters left out]"


@dataclass
class ToolRegistry:
    """The tools a runtime can run, by name."""

    tools: dict[str, AnyTool] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def of(
        cls, tools: Iterable[AnyTool], clock: Callable[[], float] = time.monotonic
    ) -> ToolRegistry:
        registry = cls(clock=clock)
        for tool in tools:
            registry.add(tool)
        return registry

    def with_tools(self, more: Iterable[AnyTool]) -> ToolRegistry:
        """This registry and `more` (one run's MCP tools): the calls run the same way."""
        return ToolRegistry.of([*self.tools.values(), *more], self.clock)

    def add(self, tool: AnyTool) -> None:
        if tool.name in self.tools:
            raise ValueError(f"a tool named `{tool.name}` is registered already")
        self.tools[tool.name] = tool

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def definitions(self, names: Iterable[str] | None = None) -> list[ToolDefinition]:
        chosen = self.tools if names is None else [n for n in names if n in self.tools]
        return [definition(self.tools[n]) for n in chosen]

    async def call(self, call: ToolCall, context: ToolContext, ports: ToolPorts) -> ToolResult:
        """Run one call to its result; whatever happens, the model gets an answer and the
        call is audited."""
        started = self.clock()
        name = call.function.name
        content, outcome = await self._run(call, context, ports)
        result = ToolResult(
            call_id=call.id,
            name=name,
            content=clip(content),
            outcome=outcome,
            duration_ms=int((self.clock() - started) * 1000),
        )
        await ports.audit(tool_call_event(context, call, result))
        return result

    async def _run(
        self, call: ToolCall, context: ToolContext, ports: ToolPorts
    ) -> tuple[str, Outcome]:
        tool = self.tools.get(call.function.name)
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            return f"Error: there is no tool `{call.function.name}` (tools: {known}).", (
                "unknown_tool"
            )
        try:
            raw = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError as exc:
            return f"Error: the arguments are not valid JSON ({exc.msg}). Call again.", (
                "invalid_arguments"
            )
        by_schema = _schema_tool(tool)
        if by_schema is not None:
            why = by_schema.invalid(raw)
            if why is not None:
                return f"Error: invalid arguments for `{tool.name}`: {why}. Call again.", (
                    "invalid_arguments"
                )
            args: Any = raw
        else:
            try:
                args = tool.arguments.model_validate(raw)  # type: ignore[union-attr]
            except ValidationError as exc:
                return f"Error: invalid arguments for `{tool.name}`: {_why(exc)}. Call again.", (
                    "invalid_arguments"
                )
        try:
            return await tool.run(args, context, ports), "ok"
        except ToolFailed as exc:
            return f"Error: {exc}", "error"


def tool_call_event(context: ToolContext, call: ToolCall, result: ToolResult) -> AuditEvent:
    """The audit record of one call: its arguments as a digest, never as text."""
    attrs: dict[str, str | bool | int] = {
        "tool": call.function.name[:64],
        "call_id": call.id[:64],
        "duration_ms": result.duration_ms,
    }
    if context.agent:
        attrs["agent"] = context.agent[:64]
    return new_event(
        context.ctx.tenant,
        AUDIT_KIND,
        TOOL_CALL_ACTION,
        service="agent_runtime",
        ctx=context.ctx,
        outcome=result.outcome,
        digests={"arguments": digest(call.function.arguments)},
        attrs=attrs,
    )
