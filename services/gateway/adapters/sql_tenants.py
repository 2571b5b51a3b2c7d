"""Tenant records and the external providers enabled for them, in SQL; and the erasure of
a tenant's rows the gateway owns (its keys, its record, its providers)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

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


# A tenant's named things (providers, MCP servers): rows keyed by (tenant, name).
Named = TenantProviderRecord | TenantMcpServerRecord
R = TypeVar("R", TenantProviderRecord, TenantMcpServerRecord)


def _name_column(model: type[Named]) -> Any:
    if model is TenantProviderRecord:
        return TenantProviderRecord.provider
    return TenantMcpServerRecord.name


async def list_named(engine: AsyncEngine, model: type[R], tenant: str) -> list[R]:
    """The tenant's rows of `model`, by name."""
    q = select(model).where(model.tenant == tenant).order_by(_name_column(model))
    async with sessions(engine)() as session:
        return list((await session.execute(q)).scalars().all())


async def put_named(
    engine: AsyncEngine, model: type[R], tenant: str, name: str, **fields: Any
) -> bool:
    """Create or replace the tenant's row `name` of `model` with `fields` (a field left out
    keeps its stored value); True when it was created."""
    async with sessions(engine)() as session, session.begin():
        row = await session.get(model, (tenant, name))
        created = row is None
        if row is None:
            row = model(tenant=tenant, created_at=_now())
            setattr(row, _name_column(model).key, name)
            session.add(row)
        for field, value in fields.items():
            setattr(row, field, value)
        row.updated_at = _now()
    return created


async def delete_named(engine: AsyncEngine, model: type[R], tenant: str, name: str) -> bool:
    """Delete the tenant's row `name` of `model`; True when there was one."""
    async with sessions(engine)() as session, session.begin():
        done = await session.execute(
            delete(model).where(model.tenant == tenant, _name_column(model) == name)
        )
    return bool(done.rowcount)  # type: ignore[attr-defined]


async def list_providers(engine: AsyncEngine, tenant: str) -> list[TenantProviderRecord]:
    return await list_named(engine, TenantProviderRecord, tenant)


async def put_provider(engine: AsyncEngine, tenant: str, name: str, **fields: Any) -> bool:
    """Create or replace the tenant's provider `name`; `api_key` sealed already (or left
    out: the stored one stays). True when it was created."""
    return await put_named(engine, TenantProviderRecord, tenant, name, **fields)


async def delete_provider(engine: AsyncEngine, tenant: str, name: str) -> bool:
    return await delete_named(engine, TenantProviderRecord, tenant, name)


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
