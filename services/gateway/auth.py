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
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.context import RequestContext, new_request_id
from libs.errors import EnclaveError
from services.gateway import keys
from services.gateway.adapters.redis_limits import RedisRateLimiter
from services.gateway.adapters.sql_keys import StoredKey, find_key
from services.gateway.policy import Action, may


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
    ) -> None:
        self.db = db
        self.limiter = limiter
        self.default_rpm = default_rpm
        self.key_cache_s = key_cache_s
        self.clock = clock
        self.key_cache: dict[str, tuple[StoredKey, float]] = {}

    async def authorize(self, authorization: str | None, action: Action) -> Grant:
        """Identify the caller and check its role; the rate limit is checked meanwhile."""
        stored = await self._identify(authorization, action)
        ctx = RequestContext(
            tenant=stored.tenant, request_id=new_request_id(), actor=stored.key_id, role=stored.role
        )
        return Grant(ctx, asyncio.ensure_future(self._within_limit(stored)))

    async def check(self, authorization: str | None, action: Action) -> RequestContext:
        """`authorize`, waiting for the rate limit too (the FastAPI routes)."""
        return await (await self.authorize(authorization, action)).within_limit()

    async def _lookup(self, key_id: str) -> StoredKey | None:
        now = self.clock()
        cached = self.key_cache.get(key_id)
        if cached and cached[1] > now:
            return cached[0]
        stored = await find_key(self.db, key_id)
        if stored is not None:
            self.key_cache[key_id] = (stored, now + self.key_cache_s)
        return stored

    async def _identify(self, authorization: str | None, action: Action) -> StoredKey:
        token = keys.bearer_token(authorization)
        if token is None:
            raise EnclaveError(
                401,
                "You didn't provide an API key. Provide it in the Authorization header "
                "(Authorization: Bearer YOUR_KEY).",
                "missing_api_key",
            )
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

    async def _within_limit(self, stored: StoredKey) -> None:
        rpm = stored.rate_limit_rpm or self.default_rpm
        if not await self.limiter.allow(stored.key_id, rpm):
            raise EnclaveError(
                429,
                f"Rate limit reached for this key ({rpm} requests per minute).",
                "rate_limit_exceeded",
            )
