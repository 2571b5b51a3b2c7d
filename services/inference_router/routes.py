"""The router's answers: the YAML registry joined with SQL rows, refreshed when a lookup
misses (a model added with `enclave models add` is found without a restart)."""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.errors import ErrorInfo
from libs.events import RouteReply
from services.inference_router.adapters.sql_models import load_routes
from services.inference_router.registry import ModelRoute, Registry

SQL_REFRESH_S = 1.0


class Routes:
    def __init__(self, base: Registry, engine: AsyncEngine) -> None:
        self.base = base
        self.current = base
        self.engine = engine
        self._loaded_at = 0.0

    async def refresh(self, force: bool = False) -> Registry:
        now = time.monotonic()
        if force or now - self._loaded_at > SQL_REFRESH_S:
            self._loaded_at = now
            self.current = self.base.with_routes(await load_routes(self.engine))
        return self.current

    async def answer(self, model: str, tenant: str, use: str) -> RouteReply:
        """What serves `model` for `tenant`: pool, adapter, per-token timeout, RAG default."""
        found = await self.resolve(model, tenant, use)
        if isinstance(found, ErrorInfo):
            return RouteReply(error=found)
        timeout_s = self.current.pools[found.pool].get("timeout_s")
        return RouteReply(
            pool=found.pool, adapter=found.adapter, timeout_s=timeout_s, rag=found.rag
        )

    async def resolve(self, model: str, tenant: str, use: str) -> ModelRoute | ErrorInfo:
        found = self.current.resolve(model, tenant, use)
        if isinstance(found, ErrorInfo) and found.status == 404:
            found = (await self.refresh()).resolve(model, tenant, use)
        return found
