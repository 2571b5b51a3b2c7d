"""The router's answers: the YAML registry joined with SQL rows, refreshed when a lookup
misses (a model added with `enclave models add` is found without a restart)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.errors import EnclaveError, ErrorInfo, model_not_allowed
from libs.events import RouteReply, Upstream
from libs.providers import (
    Provider,
    external_allowed,
    tenant_upstream,
    url_allowed,
)
from services.inference_router.adapters.sql_grants import load_grants
from services.inference_router.adapters.sql_models import load_routes
from services.inference_router.adapters.sql_tenants import load_allowed
from services.inference_router.registry import ModelRoute, Registry, permitted, provider_of

SQL_REFRESH_S = 1.0
T = TypeVar("T")


# What a read of the database raises when it cannot be reached (a restart, a failover).
UNREACHABLE = (SQLAlchemyError, OSError, TimeoutError)
log = logging.getLogger("enclave.inference_router")


class PerTenant(Generic[T]):
    """One value per tenant from `load`, read again after `ttl_s`, or at the next ask once
    forgotten. While the database cannot be read, a value whose time is up stays in use
    (a restart of PostgreSQL does not stop every chat); a forgotten one (a change was
    announced) is never served again, so that read fails until the database answers."""

    def __init__(self, load: Callable[[str], Awaitable[T]], ttl_s: float = SQL_REFRESH_S) -> None:
        self.load = load
        self.ttl_s = ttl_s
        self._held: dict[str, tuple[T, float]] = {}

    async def get(self, tenant: str) -> T:
        now = time.monotonic()
        held = self._held.get(tenant)
        if held is not None and now - held[1] <= self.ttl_s:
            return held[0]
        try:
            value = await self.load(tenant)
        except UNREACHABLE as exc:
            if held is None:
                raise
            log.warning("database unreachable (%s); %s's last reading stays in use", exc, tenant)
            return held[0]
        self._held[tenant] = (value, now)
        return value

    def put(self, tenant: str, value: T) -> None:
        """`value`, held as if just loaded."""
        self._held[tenant] = (value, time.monotonic())

    def forget(self, tenant: str) -> None:
        self._held.pop(tenant, None)


class Routes:
    def __init__(
        self, base: Registry, engine: AsyncEngine, url_prefixes: list[str] | None = None
    ) -> None:
        self.base = base
        # The addresses a tenant may send to (Settings.provider_url_prefixes), checked
        # again here: a record stored before they were set is refused, not sent.
        self.url_prefixes = url_prefixes or []
        self.current = base
        self.engine = engine
        self._loaded_at = 0.0
        # The tenant's enabled providers, and its model allow-list (None: every model).
        self._grants = PerTenant(lambda tenant: load_grants(engine, tenant))
        self._allowed = PerTenant(lambda tenant: load_allowed(engine, tenant))

    async def refresh(self, force: bool = False) -> Registry:
        now = time.monotonic()
        if force or now - self._loaded_at > SQL_REFRESH_S:
            self._loaded_at = now
            try:
                self.current = self.base.with_routes(await load_routes(self.engine))
            except UNREACHABLE as exc:
                log.warning("database unreachable (%s); the last model routes stay in use", exc)
        return self.current

    async def answer(self, model: str, tenant: str, use: str) -> RouteReply:
        """What serves `model` for `tenant`: pool (and the pools to fail over to), adapter,
        per-token timeout, RAG default. An external provider's pool is in it only where
        the tenant's admin enabled that provider for this model (libs.providers); a route
        left with no pool is that 403. Where the tenant set its own address, key or model
        name for the provider, the route carries them for that pool (`upstreams`, the key
        still sealed); pools of one provider all reach the tenant's own address, so only
        the first of them stays."""
        found = await self.resolve(model, tenant, use)
        if isinstance(found, ErrorInfo):
            return RouteReply(error=found)
        pools = self.current.pools
        allowed: list[str] = []
        providers: dict[str, str] = {}
        upstreams: dict[str, Upstream] = {}
        addressed: set[str] = set()  # providers whose tenant gave its own address
        refusal: EnclaveError | None = None
        for name in found.pools:
            provider = provider_of(pools[name])
            if provider is not None:
                grants = await self._grants.get(tenant)
                base_url = str(pools[name].get("base_url", ""))
                pool_model = str(pools[name].get("model", model))
                upstream = Provider(name=provider, base_url=base_url, models={model: pool_model})
                try:
                    external_allowed(grants, tenant, upstream, model)
                except EnclaveError as exc:
                    refusal = refusal or exc
                    continue
                [grant] = [g for g in grants if g.provider == provider]
                if grant.base_url and not url_allowed(grant.base_url, self.url_prefixes):
                    refusal = refusal or EnclaveError(
                        403,
                        f"The address set for the provider `{provider}` is not allowed.",
                        "provider_url_not_allowed",
                        param="model",
                    )
                    continue
                own = tenant_upstream(grant, base_url, pool_model, model)
                if own is not None and own.base_url and provider in addressed:
                    continue  # the tenant's own address is in the route already
                if own is not None:
                    upstreams[name] = own
                    if own.base_url:
                        addressed.add(provider)
                providers[name] = provider
            allowed.append(name)
        if not allowed:
            assert refusal is not None
            return RouteReply(error=refusal.info)
        first = allowed[0]
        return RouteReply(
            pool=first,
            adapter=found.adapter,
            timeout_s=pools[first].get("timeout_s"),
            rag=found.rag,
            pools=allowed if len(allowed) > 1 else [],
            external=bool(providers),
            providers=providers,
            upstreams=upstreams,
        )

    async def allowed(self, tenant: str) -> list[str] | None:
        """The tenant's model allow-list (None: every model), read again after
        SQL_REFRESH_S or at once after `forget` (models.changed `access`)."""
        return await self._allowed.get(tenant)

    def forget(self, tenant: str) -> None:
        self._allowed.forget(tenant)

    async def refused(self, model: str, tenant: str) -> ErrorInfo | None:
        """`model_not_allowed` where the tenant's allow-list leaves `model` out."""
        return None if permitted(model, await self.allowed(tenant)) else model_not_allowed(model)

    async def resolve(self, model: str, tenant: str, use: str) -> ModelRoute | ErrorInfo:
        """The model's route; the allow-list first (chat, completions, embeddings and
        responses all come here)."""
        refusal = await self.refused(model, tenant)
        if refusal is not None:
            return refusal
        found = self.current.resolve(model, tenant, use)
        if isinstance(found, ErrorInfo) and found.status == 404:
            found = (await self.refresh()).resolve(model, tenant, use)
        return found
