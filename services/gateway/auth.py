"""Who is asking, and may they: the one `authorize()` of every route.

The tenant always comes from the credential. Keys are looked up in SQL and cached for
`key_cache_seconds`; the role must allow the action; then the exact limits in Redis
(services/gateway/quotas.py, one Lua script): the FastAPI routes take one request from
the key's and the tenant's request buckets (`check`); the streamed routes, once the body
is read and its reservation known, `admit` it into every bucket, the monthly budget and
the tenant's requests in flight, and `settle` it when the turn ends.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from libs.context import RequestContext, new_request_id
from libs.errors import EnclaveError
from libs.rbac import TENANT_HEADER
from services.gateway import keys
from services.gateway.adapters.redis_quotas import RedisQuotas
from services.gateway.adapters.sql_keys import StoredKey, find_key
from services.gateway.identity import OIDC_SUBJECT_PREFIX, looks_like_jwt
from services.gateway.oidc import OidcVerifier
from services.gateway.policy import OPERATOR, Action, may
from services.gateway.quotas import Headroom, Limits, Reservation

# (the caller's context, the tenant it named, the action): records the refused attempt.
Denied = Callable[[RequestContext, str, str], Awaitable[object]]


class Grant:
    """An authenticated, permitted request, not yet admitted by the limits."""

    __slots__ = ("auth", "ctx", "stored")

    def __init__(self, auth: Authorizer, ctx: RequestContext, stored: StoredKey) -> None:
        self.auth = auth
        self.ctx = ctx
        self.stored = stored

    async def within_limit(self) -> RequestContext:
        """The request's context once the request buckets admitted it (429 otherwise)."""
        limits = await self.auth.limits(self.stored, inference=False)
        await self.auth.quotas.admit(self.stored.key_id, self.ctx.tenant, limits, 0)
        return self.ctx

    def start_ahead(self, reserve: int) -> int:
        """Whether this request's turn (`reserve` tokens) may start while its admission is
        asked (quotas.Headroom): what it takes of the room, counted until `admit(ahead=)`
        with it; 0: it waits."""
        return self.auth.headroom.start_ahead(self.ctx.tenant, self.stored.key_id, reserve)

    async def admit(self, reserve: int, ahead: int = 0) -> Reservation:
        """An inference request: one request and `reserve` tokens from every bucket and
        the month's budget, and a place among the tenant's requests in flight; settle it
        (`Authorizer.settle`) when the request ends, whatever its end. `ahead`: its turn
        was started before this answer (`start_ahead`)."""
        room = 0
        try:
            limits = await self.auth.limits(self.stored, inference=True)
            reservation = await self.auth.quotas.admit(
                self.stored.key_id, self.ctx.tenant, limits, reserve, self.ctx.request_id
            )
            room = reservation.room
            return reservation
        finally:
            self.auth.headroom.answered(self.ctx.tenant, self.stored.key_id, room, reserve, ahead)


# The tenant's own limits (the admin API's tenant record), overriding the settings.
TenantLimits = Callable[[str], Awaitable[Limits | None]]


class Authorizer:
    def __init__(
        self,
        db: AsyncEngine,
        quotas: RedisQuotas,
        defaults: Limits,
        key_cache_s: float,
        clock: Callable[[], float] = time.monotonic,
        oidc: OidcVerifier | None = None,
        denials: Denied | None = None,
        tenant_limits: TenantLimits | None = None,
    ) -> None:
        """`defaults`: every tenant's limits unless its record sets its own (`key_rpm` is
        the default of keys that set none)."""
        self.denials = denials  # records a cross-tenant attempt (libs.audit)
        self.oidc = oidc  # bearer JWTs from the configured issuer (services/gateway/oidc.py)
        self.db = db
        self.quotas = quotas
        self.defaults = defaults
        self.tenant_limits = tenant_limits
        self.key_cache_s = key_cache_s
        self.clock = clock
        self.key_cache: dict[str, tuple[StoredKey, float]] = {}
        self.tenant_cache: dict[str, tuple[Limits, float]] = {}
        self.headroom = Headroom()  # the room each key's last admission left

    async def limits(self, stored: StoredKey, inference: bool) -> Limits:
        """The limits of this key's request: its own rpm, its tenant's limits (cached like
        keys), and on a non-inference route the request buckets only."""
        tenant = await self._tenant_limits(stored.tenant)
        key_rpm = stored.rate_limit_rpm or tenant.key_rpm
        if not inference:
            return Limits(key_rpm=key_rpm, tenant_rpm=tenant.tenant_rpm)
        return replace(tenant, key_rpm=key_rpm)

    async def _tenant_limits(self, tenant: str) -> Limits:
        if self.tenant_limits is None:
            return self.defaults
        now = self.clock()
        cached = self.tenant_cache.get(tenant)
        if cached and cached[1] > now:
            return cached[0]
        found = await self.tenant_limits(tenant) or self.defaults
        self.tenant_cache[tenant] = (found, now + self.key_cache_s)
        return found

    async def settle(self, reservation: Reservation, used: int, model: str) -> None:
        """The end of an admitted inference request: tokens settled from its usage, its
        in-flight place freed, its day's usage counted."""
        await self.quotas.settle(reservation, used, model)

    async def authorize(
        self, authorization: str | None, action: Action, tenant_header: str | None = None
    ) -> Grant:
        """Identify the caller and check its role; the rate limit is checked meanwhile.
        `tenant_header` (OpenAI-Tenant) naming a tenant not the credential's is refused
        and recorded."""
        stored = await self._identify(authorization, action)
        target = (tenant_header or "").strip()
        if stored.role == OPERATOR:
            # No tenant of its own: it acts for the one it names, with its own column only.
            if not target:
                raise EnclaveError(
                    400,
                    "A platform operator must name the tenant it acts for (OpenAI-Tenant header).",
                    "tenant_required",
                    param="OpenAI-Tenant",
                )
            stored = replace(stored, tenant=target)
        ctx = RequestContext(
            tenant=stored.tenant, request_id=new_request_id(), actor=stored.key_id, role=stored.role
        )
        if target and target != stored.tenant:
            if self.denials is not None:
                await self.denials(ctx, target, action.value)
            raise EnclaveError(
                403, "This credential may not act for another tenant.", "cross_tenant"
            )
        return Grant(self, ctx, stored)

    async def check(
        self, authorization: str | None, action: Action, tenant_header: str | None = None
    ) -> RequestContext:
        """`authorize`, then the request limits (the FastAPI routes)."""
        return await (await self.authorize(authorization, action, tenant_header)).within_limit()

    async def check_request(self, request: Request, action: Action) -> RequestContext:
        """`check` with the credential and the OpenAI-Tenant header of a FastAPI request."""
        return await (await self.grant_request(request, action)).within_limit()

    async def grant_request(self, request: Request, action: Action) -> Grant:
        """`authorize` a FastAPI request, not yet admitted: a route that starts a turn
        admits it with its reservation (`Grant.admit`), as the streamed routes do."""
        headers = request.headers
        return await self.authorize(
            headers.get("authorization"), action, headers.get(TENANT_HEADER)
        )

    async def _lookup(self, key_id: str) -> StoredKey | None:
        now = self.clock()
        cached = self.key_cache.get(key_id)
        if cached and cached[1] > now:
            return cached[0]
        stored = await find_key(self.db, key_id)
        if stored is not None:
            self.key_cache[key_id] = (stored, now + self.key_cache_s)
        return stored

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (it was revoked): the next request reads SQL again."""
        self.key_cache.pop(key_id, None)

    def forget_tenant(self, tenant: str) -> None:
        """Drop a tenant's limits and keys from the caches (changed or erased)."""
        self.tenant_cache.pop(tenant, None)
        for key_id, (stored, _) in list(self.key_cache.items()):
            if stored.tenant == tenant:
                del self.key_cache[key_id]

    async def _identify(self, authorization: str | None, action: Action) -> StoredKey:
        token = keys.bearer_token(authorization)
        if token is None:
            raise EnclaveError(
                401,
                "You didn't provide an API key. Provide it in the Authorization header "
                "(Authorization: Bearer YOUR_KEY).",
                "missing_api_key",
            )
        if self.oidc is not None and looks_like_jwt(token):
            return await self._from_oidc(self.oidc, token, action)
        parsed = keys.parse(token)
        stored = await self._lookup(parsed[0]) if parsed else None
        if (
            parsed is None
            or stored is None
            or stored.revoked
            or not keys.matches(parsed[0], parsed[1], stored.secret_hash)
        ):
            raise EnclaveError(401, "Incorrect API key provided.", "invalid_api_key")
        if not may(stored.role, action):
            raise EnclaveError(
                403,
                f"The role `{stored.role}` may not perform `{action.value}`.",
                "insufficient_permissions",
            )
        return stored

    async def _from_oidc(self, oidc: OidcVerifier, token: str, action: Action) -> StoredKey:
        """A verified token as the key it stands for: its subject limited like a key, and
        of its roles the first (most powerful) that may perform the action."""
        identity = await oidc.verify(token)
        role = next((r for r in keys.ROLES if r in identity.roles and may(r, action)), None)
        if role is None:
            names = ", ".join(sorted(identity.roles)) or "none"
            raise EnclaveError(
                403,
                f"The role(s) `{names}` may not perform `{action.value}`.",
                "insufficient_permissions",
            )
        return StoredKey(
            key_id=OIDC_SUBJECT_PREFIX + identity.subject,
            secret_hash="",
            tenant=identity.tenant,
            role=role,
            rate_limit_rpm=None,
            revoked=False,
        )
