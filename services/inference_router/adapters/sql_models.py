"""Model routes registered at run time, in the SQL table registered_models."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db.engine import sessions
from libs.db.models import RegisteredModel
from services.inference_router.registry import ModelRoute, rag_default


async def load_routes(engine: AsyncEngine) -> list[ModelRoute]:
    async with sessions(engine)() as session:
        rows = (await session.execute(select(RegisteredModel))).scalars().all()
    return [
        ModelRoute(
            id=r.id,
            kind=r.kind,
            pool=r.pool,
            adapter=r.adapter,
            tenant=r.tenant,
            created=int(r.created_at.timestamp()),
            rag=rag_default({"id": r.id, "kind": r.kind, **(r.params or {})}),
        )
        for r in rows
    ]


async def add_route(
    engine: AsyncEngine,
    model_id: str,
    kind: str,
    pool: str,
    tenant: str | None = None,
    adapter: str | None = None,
    params: dict[str, Any] | None = None,
) -> None:
    async with sessions(engine)() as session, session.begin():
        await session.merge(
            RegisteredModel(
                id=model_id,
                kind=kind,
                pool=pool,
                tenant=tenant,
                adapter=adapter,
                params=params or {},
            )
        )
