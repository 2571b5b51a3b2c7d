"""Per-key request rate limits in Redis, shared by every gateway replica (fixed 1 s windows)."""

from __future__ import annotations

import time

from redis.asyncio import Redis


class RedisRateLimiter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def allow(self, key_id: str, per_minute: int) -> bool:
        # A per-second window of rpm/60 keeps bursts bounded without a Lua script.
        per_second = max(1, per_minute // 60)
        window = f"enclave:rl:{key_id}:{int(time.time())}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(window)
        pipe.expire(window, 2)
        count, _ = await pipe.execute()
        return int(count) <= per_second
