"""A tenant's model allow-list (the gateway's PUT /v1/admin/models writes it in the tenant
record; the router only reads it)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db.engine import sessions
from libs.db.models import ALLOWED_MODELS, TenantRecord


async def load_allowed(engine: AsyncEngine, tenant: str) -> list[str] | None:
    """The model ids `tenant` may use; None: every model (no record, or no list)."""
    async with sessions(engine)() as session:
        row = await session.get(TenantRecord, tenant)
    value = (row.limits or {}).get(ALLOWED_MODELS) if row is not None else None
    return None if value is None else [str(m) for m in value]
