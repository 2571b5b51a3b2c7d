"""MCP servers' tools as agent tools (pure over the `McpClient` port; adapters/mcp_client.py
speaks MCP with the `mcp` SDK).

A tenant's enabled servers (libs.mcp_servers) are asked for their tools when an agent
that names them runs; each tool the server offers (its `allowed_tools`) becomes an
`McpTool` named `mcp__<server>__<tool>` whose JSON Schema is the tool's `inputSchema`. It
runs through the same `ToolRegistry.call` as a built-in tool: the arguments checked
against that schema first (a call that does not fit goes back to the model as a tool
error and never reaches the server), the result clipped, the call audited (`tool.call`),
and in the agent loop the result screened in the guardrails' `context` direction. A server
that cannot be reached offers no tools for that run (logged), and a call whose server
fails is a tool error. `require_approval` puts its tools under the approvals of the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from libs.mcp_servers import McpServer, tool_name, wants
from services.agent_runtime.tools import AnyTool, ToolContext, ToolFailed, ToolPorts

log = logging.getLogger("enclave.agent_runtime.mcp")
MAX_DESCRIPTION = 1_024


@dataclass(frozen=True)
class McpToolSpec:
    """One tool as its server lists it."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class McpReply:
    """What a call returned: its content as text, and whether the server calls it an error."""

    text: str
    is_error: bool = False


class McpUnavailable(Exception):
    """The server could not be started, reached or asked (the message says why)."""


class McpClient(Protocol):
    async def list_tools(self, server: McpServer) -> list[McpToolSpec]: ...

    async def call(self, server: McpServer, tool: str, arguments: dict[str, Any]) -> McpReply: ...


class McpServerSource(Protocol):
    async def servers(self, tenant: str) -> list[McpServer]:
        """The tenant's enabled servers."""
        ...


@dataclass(frozen=True)
class Toolset:
    """One run's extra tools (the MCP tools its agent names) and those that wait for an
    approval."""

    tools: tuple[AnyTool, ...] = ()
    approvals: frozenset[str] = field(default_factory=frozenset)

    @property
    def names(self) -> set[str]:
        return {t.name for t in self.tools}


def _why(errors: Iterable[Any]) -> str | None:
    found = sorted(errors, key=lambda e: list(e.path))
    if not found:
        return None
    parts = []
    for err in found[:3]:
        where = ".".join(str(p) for p in err.path) or "arguments"
        parts.append(f"{where}: {err.message[:200]}")
    return "; ".join(parts)


class McpTool:
    """One tool of one server, as the model sees and calls it."""

    def __init__(self, server: McpServer, spec: McpToolSpec, client: McpClient) -> None:
        self.server = server
        self.tool = spec.name
        self.name = tool_name(server.name, spec.name)
        self.description = spec.description[:MAX_DESCRIPTION]
        schema = dict(spec.input_schema or {})
        schema.setdefault("type", "object")
        self.parameters = schema
        self.client = client
        try:
            Draft202012Validator.check_schema(schema)
            self._validator: Draft202012Validator | None = Draft202012Validator(schema)
        except SchemaError:
            self._validator = None  # a schema that is no schema: every call is refused

    def invalid(self, args: Any) -> str | None:
        if self._validator is None:
            return "the server's input schema for this tool is not a valid JSON Schema"
        if not isinstance(args, dict):
            return "arguments: must be a JSON object"
        return _why(self._validator.iter_errors(args))

    async def run(self, args: Any, call: ToolContext, ports: ToolPorts) -> str:
        try:
            reply = await self.client.call(self.server, self.tool, args)
        except McpUnavailable as exc:
            raise ToolFailed(f"the MCP server `{self.server.name}` failed: {exc}") from None
        if reply.is_error:
            raise ToolFailed(reply.text or "the tool reported an error")
        return reply.text


async def toolset(
    source: McpServerSource, client: McpClient, tenant: str, agent_tools: list[str]
) -> Toolset:
    """The MCP tools an agent names (`mcp__<server>` for all of a server's, or
    `mcp__<server>__<tool>`), from the tenant's enabled servers only."""
    if not any(t.startswith("mcp__") for t in agent_tools):
        return Toolset()
    tools: list[AnyTool] = []
    approvals: set[str] = set()
    for server in await source.servers(tenant):
        if server.tenant != tenant or not server.enabled:
            continue
        try:
            specs = await client.list_tools(server)
        except McpUnavailable as exc:
            log.warning("MCP server %s of tenant %s offers no tools: %s", server.name, tenant, exc)
            continue
        for spec in specs:
            name = tool_name(server.name, spec.name)
            if not server.offers(spec.name) or not wants(agent_tools, server.name, name):
                continue
            if any(t.name == name for t in tools):
                continue  # two names cut to the same 64 characters: the first one stays
            tools.append(McpTool(server, spec, client))
            if server.needs_approval(spec.name):
                approvals.add(name)
    return Toolset(tuple(tools), frozenset(approvals))


def reply_text(content: list[dict[str, Any]], structured: Any = None) -> str:
    """A call's content blocks as the model reads them: the text blocks joined, other
    blocks named (an image is not shown to a text model), else the structured content."""
    parts: list[str] = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind == "resource":
            resource = block.get("resource") or {}
            parts.append(str(resource.get("text") or f"[resource {resource.get('uri', '')}]"))
        else:
            parts.append(f"[{kind} content left out]")
    if not parts and structured is not None:
        return json.dumps(structured)
    return "\n".join(parts)
