"""Tenant records and the external providers enabled for them, in SQL; and the erasure of
a tenant's rows the gateway owns (its keys, its record, its providers)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db.engine import sessions
from libs.db.models import (
    ALLOWED_MODELS,
    ApiKey,
    TenantMcpServerRecord,
    TenantProviderRecord,
    TenantRecord,
)


def _now() -> datetime:
    return datetime.now(UTC)


async def get_tenant(engine: AsyncEngine, tenant: str) -> TenantRecord | None:
    async with sessions(engine)() as session:
        return await session.get(TenantRecord, tenant)


async def put_tenant(
    engine: AsyncEngine, tenant: str, display_name: str, limits: dict[str, int]
) -> tuple[TenantRecord, bool]:
    """Create or replace the tenant's record; True when it was created."""
    async with sessions(engine)() as session, session.begin():
        row = await session.get(TenantRecord, tenant)
        created = row is None
        if row is None:
            row = TenantRecord(name=tenant, created_at=_now())
            session.add(row)
        row.display_name = display_name
        kept = (row.limits or {}).get(ALLOWED_MODELS)  # not a limit: the models' API owns it
        row.limits = {**limits, **({ALLOWED_MODELS: kept} if kept is not None else {})}
        row.updated_at = _now()
    return row, created


def own_limits(row: TenantRecord | None) -> dict[str, Any]:
    """The limits a tenant's record sets itself (without its model allow-list)."""
    return {k: v for k, v in ((row.limits if row else None) or {}).items() if k != ALLOWED_MODELS}


def allowed_models(row: TenantRecord | None) -> list[str] | None:
    """The tenant's model allow-list; None: every model."""
    value = ((row.limits if row else None) or {}).get(ALLOWED_MODELS)
    return None if value is None else [str(m) for m in value]


async def put_allowed_models(engine: AsyncEngine, tenant: str, allowed: list[str] | None) -> None:
    """Set the tenant's model allow-list (None: every model), its record made if absent."""
    async with sessions(engine)() as session, session.begin():
        row = await session.get(TenantRecord, tenant)
        if row is None:
            row = TenantRecord(name=tenant, display_name="", limits={}, created_at=_now())
            session.add(row)
        limits = {k: v for k, v in (row.limits or {}).items() if k != ALLOWED_MODELS}
        if allowed is not None:
            limits[ALLOWED_MODELS] = allowed
        row.limits = limits
        row.updated_at = _now()


async def list_providers(engine: AsyncEngine, tenant: str) -> list[TenantProviderRecord]:
    q = (
        select(TenantProviderRecord)
        .where(TenantProviderRecord.tenant == tenant)
        .order_by(TenantProviderRecord.provider)
    )
    async with sessions(engine)() as session:
        return list((await session.execute(q)).scalars().all())


async def put_provider(engine: AsyncEngine, tenant: str, name: str, **fields: Any) -> bool:
    """Create or replace the tenant's provider `name`; `api_key` sealed already (or left
    out: the stored one stays). True when it was created."""
    async with sessions(engine)() as session, session.begin():
        row = await session.get(TenantProviderRecord, (tenant, name))
        created = row is None
        if row is None:
            row = TenantProviderRecord(tenant=tenant, provider=name, created_at=_now())
            session.add(row)
        for field, value in fields.items():
            setattr(row, field, value)
        row.updated_at = _now()
    return created


async def delete_provider(engine: AsyncEngine, tenant: str, name: str) -> bool:
    async with sessions(engine)() as session, session.begin():
        done = await session.execute(
            delete(TenantProviderRecord).where(
                TenantProviderRecord.tenant == tenant, TenantProviderRecord.provider == name
            )
        )
    return bool(done.rowcount)  # type: ignore[attr-defined]


async def erase_tenant_rows(engine: AsyncEngine, tenant: str) -> dict[str, list[str] | int]:
    """Delete the tenant's keys, providers, MCP servers and record; returns the key ids
    deleted (every replica must drop them from its cache) and the other counts."""
    async with sessions(engine)() as session, session.begin():
        key_ids = list(
            (await session.execute(select(ApiKey.key_id).where(ApiKey.tenant == tenant)))
            .scalars()
            .all()
        )
        await session.execute(delete(ApiKey).where(ApiKey.tenant == tenant))
        providers = await session.execute(
            delete(TenantProviderRecord).where(TenantProviderRecord.tenant == tenant)
        )
        mcp = await session.execute(
            delete(TenantMcpServerRecord).where(TenantMcpServerRecord.tenant == tenant)
        )
        record = await session.execute(delete(TenantRecord).where(TenantRecord.name == tenant))
    return {
        "keys": key_ids,
        "providers": int(providers.rowcount),  # type: ignore[attr-defined]
        "mcp_servers": int(mcp.rowcount),  # type: ignore[attr-defined]
        "tenant_record": int(record.rowcount),  # type: ignore[attr-defined]
    }
