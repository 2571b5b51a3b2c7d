"""Who is asking, and may they: the one `authorize()` of every route.

The tenant always comes from the credential. Keys are looked up in SQL and cached for
`key_cache_seconds`; the role must allow the action; the key's rate limit is checked in
Redis. `authorize` starts that check and returns at once, so the streamed routes read and
validate the body while it runs (hot_path.py); the FastAPI routes wait for it first
(`check`). Same checks, same errors, either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from libs.context import RequestContext, new_request_id
from libs.errors import EnclaveError
from libs.rbac import TENANT_HEADER
from services.gateway import keys
from services.gateway.adapters.redis_limits import RedisRateLimiter
from services.gateway.adapters.sql_keys import StoredKey, find_key
from services.gateway.identity import OIDC_SUBJECT_PREFIX, looks_like_jwt
from services.gateway.oidc import OidcVerifier
from services.gateway.policy import Action, may

# (the caller's context, the tenant it named, the action): records the refused attempt.
Denied = Callable[[RequestContext, str, str], Awaitable[object]]


class Grant:
    """An authenticated, permitted request; its rate-limit check may still be running."""

    __slots__ = ("ctx", "limited")

    def __init__(self, ctx: RequestContext, limited: asyncio.Future[None]) -> None:
        self.ctx = ctx
        self.limited = limited

    async def within_limit(self) -> RequestContext:
        """The request's context once the rate limit admitted it (429 otherwise)."""
        await self.limited
        return self.ctx


class Authorizer:
    def __init__(
        self,
        db: AsyncEngine,
        limiter: RedisRateLimiter,
        default_rpm: int,
        key_cache_s: float,
        clock: Callable[[], float] = time.monotonic,
        oidc: OidcVerifier | None = None,
        denials: Denied | None = None,
    ) -> None:
        self.denials = denials  # records a cross-tenant attempt (libs.audit)
        self.oidc = oidc  # bearer JWTs from the configured issuer (services/gateway/oidc.py)
        self.db = db
        self.limiter = limiter
        self.default_rpm = default_rpm
        self.key_cache_s = key_cache_s
        self.clock = clock
        self.key_cache: dict[str, tuple[StoredKey, float]] = {}

    async def authorize(
        self, authorization: str | None, action: Action, tenant_header: str | None = None
    ) -> Grant:
        """Identify the caller and check its role; the rate limit is checked meanwhile.
        `tenant_header` (OpenAI-Tenant) naming a tenant not the credential's is refused
        and recorded."""
        stored = await self._identify(authorization, action)
        ctx = RequestContext(
            tenant=stored.tenant, request_id=new_request_id(), actor=stored.key_id, role=stored.role
        )
        target = (tenant_header or "").strip()
        if target and target != stored.tenant:
            if self.denials is not None:
                await self.denials(ctx, target, action.value)
            raise EnclaveError(
                403, "This credential may not act for another tenant.", "cross_tenant"
            )
        return Grant(ctx, asyncio.ensure_future(self._within_limit(stored)))

    async def check(
        self, authorization: str | None, action: Action, tenant_header: str | None = None
    ) -> RequestContext:
        """`authorize`, waiting for the rate limit too (the FastAPI routes)."""
        return await (await self.authorize(authorization, action, tenant_header)).within_limit()

    async def check_request(self, request: Request, action: Action) -> RequestContext:
        """`check` with the credential and the OpenAI-Tenant header of a FastAPI request."""
        headers = request.headers
        return await self.check(headers.get("authorization"), action, headers.get(TENANT_HEADER))

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

    async def _within_limit(self, stored: StoredKey) -> None:
        rpm = stored.rate_limit_rpm or self.default_rpm
        if not await self.limiter.allow(stored.key_id, rpm):
            raise EnclaveError(
                429,
                f"Rate limit reached for this key ({rpm} requests per minute).",
                "rate_limit_exceeded",
            )
