"""MCP servers a tenant's admin registered (the gateway's `/v1/admin/mcp_servers` writes
them to SQL, `tenant_mcp_servers`; the agent runtime reads them). Pure: what a server
record is, and what its tools are called and need.

A server runs over `stdio` (a command the runtime starts under the sandbox's bubblewrap
profile: no network, a read-only system) or `streamable_http` (an outbound connection to
`url`, made only while the server is enabled for the tenant). Its tools reach an agent as
`mcp__<server>__<tool>`; `allowed_tools` limits which of them are offered (None: all),
and `require_approval` says which calls wait for an approver (`always`, `never`, or a list
of the server's tool names).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

SERVER_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
# An MCP tool name as the model sees it must stay a function name (OpenAI: ^[A-Za-z0-9_-]{1,64}).
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PREFIX = "mcp__"
SEP = "__"


class McpServerConfig(BaseModel):
    """What an admin registers for one server of its tenant (the body of the PUT)."""

    model_config = ConfigDict(extra="forbid")

    transport: Literal["stdio", "streamable_http"]
    command: str | None = Field(None, min_length=1, max_length=1_000)
    args: list[str] = Field(default_factory=list, max_length=64)
    url: str | None = Field(None, min_length=1, max_length=1_000)
    allowed_tools: list[str] | None = Field(None, max_length=256)
    require_approval: Literal["always", "never"] | list[str] = "never"
    enabled: bool = False

    @model_validator(mode="after")
    def _fits_transport(self) -> McpServerConfig:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("a stdio server needs `command`")
            if self.url is not None:
                raise ValueError("a stdio server takes no `url`")
        else:
            if not self.url or not re.match(r"^https?://[^\s/]+", self.url):
                raise ValueError("a streamable_http server needs an http(s) `url`")
            if self.command is not None or self.args:
                raise ValueError("a streamable_http server takes no `command` or `args`")
        if any(len(a) > 100_000 for a in self.args):
            raise ValueError("an argument is longer than 100,000 characters")
        return self


class McpServer(McpServerConfig):
    tenant: str
    name: str = Field(pattern=SERVER_NAME)

    def offers(self, tool: str) -> bool:
        """Whether the server's tool `tool` may be offered to agents."""
        return bool(TOOL_NAME.match(tool)) and (
            self.allowed_tools is None or tool in self.allowed_tools
        )

    def needs_approval(self, tool: str) -> bool:
        if self.require_approval == "always":
            return True
        if self.require_approval == "never":
            return False
        return tool in self.require_approval


def tool_name(server: str, tool: str) -> str:
    """The name the model sees: `mcp__<server>__<tool>`, at most 64 characters."""
    return f"{PREFIX}{server}{SEP}{tool}"[:64]


def server_of(name: str) -> str | None:
    """The server of an MCP tool's name as the model sees it (None: not an MCP tool)."""
    if not name.startswith(PREFIX):
        return None
    server, sep, _ = name[len(PREFIX) :].partition(SEP)
    return server if sep and server else None


def wants(agent_tools: list[str], server: str, name: str) -> bool:
    """Whether an agent's `tools` list names this MCP tool: the tool's own name, or the
    whole server as `mcp__<server>`."""
    return name in agent_tools or f"{PREFIX}{server}" in agent_tools


def internal_address(address: str) -> bool:
    """Whether an IP address is the platform's side of the network: loopback, private,
    link-local (cloud metadata), unspecified or reserved."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return True  # not an address: refused rather than guessed
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_reserved
        or ip.is_multicast
    )


def url_host(url: str) -> tuple[str, int]:
    """The host and port a server's `url` connects to."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.hostname or ""), port
