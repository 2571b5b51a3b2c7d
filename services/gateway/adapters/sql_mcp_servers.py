"""The MCP servers each tenant's admin registered, in SQL (`tenant_mcp_servers`); the
agent runtime reads them (services/agent_runtime/adapters/sql_mcp_servers.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db.engine import sessions
from libs.db.models import TenantMcpServerRecord
from libs.mcp_servers import McpServerConfig


def _now() -> datetime:
    return datetime.now(UTC)


async def list_mcp_servers(engine: AsyncEngine, tenant: str) -> list[TenantMcpServerRecord]:
    q = (
        select(TenantMcpServerRecord)
        .where(TenantMcpServerRecord.tenant == tenant)
        .order_by(TenantMcpServerRecord.name)
    )
    async with sessions(engine)() as session:
        return list((await session.execute(q)).scalars().all())


async def put_mcp_server(
    engine: AsyncEngine, tenant: str, name: str, config: McpServerConfig
) -> bool:
    """Create or replace the tenant's server `name`; True when it was created."""
    async with sessions(engine)() as session, session.begin():
        row = await session.get(TenantMcpServerRecord, (tenant, name))
        created = row is None
        if row is None:
            row = TenantMcpServerRecord(tenant=tenant, name=name, created_at=_now())
            session.add(row)
        row.config = config.model_dump(mode="json")
        row.enabled = config.enabled
        row.updated_at = _now()
    return created


async def delete_mcp_server(engine: AsyncEngine, tenant: str, name: str) -> bool:
    async with sessions(engine)() as session, session.begin():
        done = await session.execute(
            delete(TenantMcpServerRecord).where(
                TenantMcpServerRecord.tenant == tenant, TenantMcpServerRecord.name == name
            )
        )
    return bool(done.rowcount)  # type: ignore[attr-defined]
