"""The MCP servers a tenant's admin registered (the gateway's admin API writes
`tenant_mcp_servers`; the runtime only reads it), read again after `refresh_s`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db.engine import sessions
from libs.db.models import TenantMcpServerRecord
from libs.mcp_servers import McpServer

log = logging.getLogger("enclave.agent_runtime.mcp")


class SqlMcpServers:
    def __init__(
        self,
        engine: AsyncEngine,
        refresh_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.refresh_s = refresh_s
        self.clock = clock
        self._cache: dict[str, tuple[list[McpServer], float]] = {}

    async def servers(self, tenant: str) -> list[McpServer]:
        """The tenant's enabled servers (a record that no longer reads is left out)."""
        now = self.clock()
        held = self._cache.get(tenant)
        if held is not None and now - held[1] <= self.refresh_s:
            return held[0]
        q = select(TenantMcpServerRecord).where(
            TenantMcpServerRecord.tenant == tenant, TenantMcpServerRecord.enabled.is_(True)
        )
        async with sessions(self.engine)() as session:
            rows = (await session.execute(q)).scalars().all()
        found: list[McpServer] = []
        for row in rows:
            try:
                found.append(McpServer(tenant=row.tenant, name=row.name, **row.config))
            except ValidationError:
                log.error("MCP server %s of tenant %s does not read: left out", row.name, tenant)
        self._cache[tenant] = (found, now)
        return found
