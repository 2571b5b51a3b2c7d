"""The MCP servers each tenant's admin registered, in SQL (`tenant_mcp_servers`); the
agent runtime reads them (services/agent_runtime/adapters/sql_mcp_servers.py)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db.models import TenantMcpServerRecord
from libs.mcp_servers import McpServerConfig
from services.gateway.adapters.sql_tenants import delete_named, list_named, put_named


async def list_mcp_servers(engine: AsyncEngine, tenant: str) -> list[TenantMcpServerRecord]:
    return await list_named(engine, TenantMcpServerRecord, tenant)


async def put_mcp_server(
    engine: AsyncEngine, tenant: str, name: str, config: McpServerConfig
) -> bool:
    """Create or replace the tenant's server `name`; True when it was created."""
    return await put_named(
        engine,
        TenantMcpServerRecord,
        tenant,
        name,
        config=config.model_dump(mode="json"),
        enabled=config.enabled,
    )


async def delete_mcp_server(engine: AsyncEngine, tenant: str, name: str) -> bool:
    return await delete_named(engine, TenantMcpServerRecord, tenant, name)
