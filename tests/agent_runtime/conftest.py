"""The agent tests run code in the sandbox tests' real bubblewrap backend, and MCP servers
through the runtime's own sessions (stdio ones under the sandbox's bubblewrap profile)."""

from collections.abc import AsyncIterator

import pytest

from libs.seccomp import build_filter
from libs.settings import Settings
from services.agent_runtime.adapters.mcp_client import McpSessions
from tests.sandbox.conftest import LIMITS, backend, seccomp

__all__ = ["LIMITS", "backend", "seccomp"]


@pytest.fixture(scope="session")
async def sessions() -> AsyncIterator[McpSessions]:
    # The fixture's streamable HTTP server listens on loopback: allowed here by name.
    settings = Settings(mcp_http_internal_hosts=["127.0.0.1"])
    mcp = McpSessions.from_settings(settings, build_filter())
    yield mcp
    await mcp.close()
