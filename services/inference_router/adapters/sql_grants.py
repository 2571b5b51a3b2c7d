"""The external providers each tenant's admin enabled (the gateway's admin API writes
`tenant_providers`; the router only reads it, as `libs.providers.TenantProvider`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db.engine import sessions
from libs.db.models import TenantProviderRecord
from libs.providers import TenantProvider


async def load_grants(engine: AsyncEngine, tenant: str) -> list[TenantProvider]:
    q = select(TenantProviderRecord).where(TenantProviderRecord.tenant == tenant)
    async with sessions(engine)() as session:
        rows = (await session.execute(q)).scalars().all()
    return [
        TenantProvider(
            tenant=r.tenant,
            provider=r.provider,
            enabled=r.enabled,
            allowed_models=list(r.allowed_models or []),
            base_url=r.base_url or "",
            api_key=r.api_key or "",  # sealed, as stored
            models=dict(r.models or {}),
        )
        for r in rows
    ]
