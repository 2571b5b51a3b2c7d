"""Exact limits and budgets on the real Redis: two limiter instances on two connections
stand for two gateway replicas."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from libs.errors import EnclaveError
from services.gateway.adapters.redis_quotas import RedisQuotas
from services.gateway.quotas import (
    Limits,
    RateLimited,
    Reservation,
    reservation_size,
    seconds_to_next_month,
)
from tests.infra import Infra

Replicas = tuple[Redis, Redis, str]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def replicas(services: Infra) -> AsyncIterator[Replicas]:
    prefix = f"enclave:test:q:{secrets.token_hex(4)}"
    one, two = Redis.from_url(services.redis_url), Redis.from_url(services.redis_url)
    try:
        yield one, two, prefix
    finally:
        async for key in one.scan_iter(match=f"{prefix}:*"):
            await one.delete(key)
        await one.aclose()
        await two.aclose()


async def _flood(
    limiters: list[RedisQuotas], keys: list[str], limits: Limits, n: int, reserve: int = 1
) -> tuple[list[Reservation], list[RateLimited]]:
    async def one(i: int) -> Reservation | RateLimited:
        try:
            return await limiters[i % len(limiters)].admit(
                keys[i % len(keys)], "acme", limits, reserve
            )
        except RateLimited as exc:
            return exc

    results = await asyncio.gather(*(one(i) for i in range(n)))
    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(admitted) + len(refused) == n
    return admitted, refused


async def test_two_replicas_200_concurrent_admit_exactly_the_limit(replicas: Replicas) -> None:
    one, two, prefix = replicas
    clock = Clock()  # frozen: no refill while the flood runs, so the limit is exact
    limiters = [RedisQuotas(one, prefix, clock), RedisQuotas(two, prefix, clock)]
    admitted, refused = await _flood(limiters, ["k1"], Limits(key_rpm=150), 200)
    assert len(admitted) == 150
    assert all(r.info.code == "rate_limit_exceeded" for r in refused)
    assert all(r.retry_after_s == 1 for r in refused)  # one request refills in 0.4 s
    assert refused[0].headers() == {"retry-after": "1"}
    # Per tenant across two keys: the tenant's 120 bind before each key's 100.
    limits = Limits(key_rpm=100, tenant_rpm=120)
    admitted, refused = await _flood(limiters, ["a", "b"], limits, 200)
    assert len(admitted) == 120
    assert "per tenant" in refused[0].info.message


async def test_on_redis_time_the_limit_holds_and_is_reached(replicas: Replicas) -> None:
    one, two, prefix = replicas
    limiters = [RedisQuotas(one, prefix), RedisQuotas(two, prefix)]
    start = time.monotonic()
    admitted, _ = await _flood(limiters, ["k"], Limits(key_rpm=150, tenant_rpm=6000), 200)
    elapsed = time.monotonic() - start
    refill = 150 / 60 * elapsed  # a bucket refills continuously while the flood runs
    assert len(admitted) <= 150 + int(refill)
    assert len(admitted) >= 0.99 * 150


async def test_tokens_are_reserved_then_settled(replicas: Replicas) -> None:
    one, _, prefix = replicas
    clock = Clock()
    quotas = RedisQuotas(one, prefix, clock)
    limits = Limits(key_tpm=1000, tenant_tpm=5000)
    first = await quotas.admit("k", "acme", limits, 600)
    with pytest.raises(RateLimited) as caught:
        await quotas.admit("k", "acme", limits, 600)
    assert "tokens per minute per key" in caught.value.info.message
    assert caught.value.retry_after_s == 12  # 200 tokens short at 1000/min
    await quotas.settle(first, used=100)  # 500 of the 600 come back
    second = await quotas.admit("k", "acme", limits, 600)  # 900 there now
    await quotas.settle(second, used=900)  # the estimate was 300 short: taken now
    clock.now += 30  # the bucket is at 0; half a minute refills 500
    with pytest.raises(RateLimited):
        await quotas.admit("k", "acme", limits, 600)
    await quotas.admit("k", "acme", limits, 500)
    assert await quotas.used_this_month("acme") == 100 + 900 + 500


async def test_a_request_bigger_than_a_bucket_is_a_400_not_a_wait(replicas: Replicas) -> None:
    one, _, prefix = replicas
    with pytest.raises(EnclaveError) as caught:
        await RedisQuotas(one, prefix).admit("k", "acme", Limits(key_tpm=1000), 1001)
    assert caught.value.info.status == 400 and caught.value.info.param == "max_tokens"


async def test_the_monthly_budget(replicas: Replicas) -> None:
    one, two, prefix = replicas
    clock = Clock()
    quotas = [RedisQuotas(one, prefix, clock), RedisQuotas(two, prefix, clock)]
    limits = Limits(monthly_tokens=1000)
    first = await quotas[0].admit("k1", "acme", limits, 600)
    await quotas[1].settle(first, used=700)
    with pytest.raises(RateLimited) as caught:
        await quotas[1].admit("k2", "acme", limits, 400)
    assert caught.value.info.code == "insufficient_quota"
    assert caught.value.retry_after_s == seconds_to_next_month(
        datetime.fromtimestamp(clock.now, UTC)
    )
    await quotas[0].admit("k2", "acme", limits, 300)  # exactly the rest fits
    assert await quotas[0].used_this_month("acme") == 1000
    assert await quotas[0].used_this_month("globex") == 0
    # Concurrent admissions against the budget never pass it either.
    admitted, refused = await _flood(quotas, ["x"], Limits(monthly_tokens=5000), 200, 100)
    assert len(admitted) == 40  # acme has 1000 used already: (5000 - 1000) / 100
    assert all(r.info.code == "insufficient_quota" for r in refused)


def test_pure_helpers() -> None:
    assert reservation_size(400, 50) == 150
    assert reservation_size(0, None) == 1024
    assert seconds_to_next_month(datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)) == 30
    assert seconds_to_next_month(datetime(2026, 1, 31, tzinfo=UTC)) == 86400


async def test_an_admission_says_the_room_every_limit_has_left(replicas: Replicas) -> None:
    """The room that lets a gateway start the next turns ahead of their admission
    (quotas.Headroom): the fewest further requests of this size any limit would admit."""
    one, _, prefix = replicas
    clock = Clock()
    quotas = RedisQuotas(one, prefix, clock)
    # 10 requests a minute: after the first, room for 9 more.
    assert (await quotas.admit("k", "acme", Limits(key_rpm=10), 0)).room == 9
    # 1000 tokens a minute, 300 a request: 700 left, room for 2 more.
    assert (await quotas.admit("k2", "acme", Limits(key_tpm=1000), 300)).room == 2
    # A budget of 1000 with 300 used by k2's request above: 400 left after this one.
    limits = Limits(monthly_tokens=1000)
    assert (await quotas.admit("k3", "acme", limits, 300)).room == 1
    # Three in flight at most: with r2 two are, room for one more; with r3 none.
    flying = Limits(concurrency=3)
    await quotas.admit("k4", "globex", flying, 0, "r1")
    assert (await quotas.admit("k4", "globex", flying, 0, "r2")).room == 1
    assert (await quotas.admit("k4", "globex", flying, 0, "r3")).room == 0
    assert (await quotas.admit("k5", "initech", Limits(), 5)).room >= 1_000_000
