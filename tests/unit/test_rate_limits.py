"""The per-key rate limiter against the real Redis: exact near the limit, no round trip
on the request's path far below it, and every request counted either way."""

from __future__ import annotations

import collections
import secrets
import time

import pytest
from redis.asyncio import Redis

from services.gateway.adapters.redis_limits import RedisRateLimiter
from tests.infra import Infra


@pytest.fixture
async def limiter(services: Infra):  # type: ignore[no-untyped-def]
    redis = Redis.from_url(services.redis_url)
    yield RedisRateLimiter(redis)
    await redis.aclose()


async def _counted(limiter: RedisRateLimiter, key: str, seconds: set[int]) -> int:
    await limiter.drain()
    values = [await limiter.redis.get(f"enclave:rl:{key}:{s}") for s in seconds]
    return sum(int(v or 0) for v in values)


async def test_never_more_than_the_limit_in_a_window(limiter: RedisRateLimiter) -> None:
    key = "k" + secrets.token_hex(4)
    admitted: collections.Counter[int] = collections.Counter()
    calls: collections.Counter[int] = collections.Counter()
    for _ in range(400):
        second = int(time.time())
        calls[second] += 1
        if await limiter.allow(key, 6000):  # 100 a second
            admitted[second] += 1
    assert max(admitted.values()) <= 100
    assert sum(admitted.values()) < 400
    # Far below the limit it did not wait for Redis; everything was counted anyway.
    assert limiter.optimistic > 0
    assert await _counted(limiter, key, set(calls)) == 400


async def test_a_burst_from_nothing_is_exact(limiter: RedisRateLimiter) -> None:
    import asyncio

    key = "k" + secrets.token_hex(4)
    second = int(time.time())
    results = await asyncio.gather(*(limiter.allow(key, 600) for _ in range(30)))  # 10 a second
    if int(time.time()) == second:  # all in one window
        assert sum(results) == 10
    assert limiter.optimistic == 0
