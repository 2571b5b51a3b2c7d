"""Per-key request rate limits in Redis, shared by every gateway replica (fixed 1 s windows).

Every request is counted in Redis. A key far below its limit (under half of it, by the
latest count Redis returned for this or the previous second, plus this replica's counts
still in flight) is admitted without waiting for that round trip, which is otherwise on
every request's path; a key nearer its limit waits for its own count, so the limit itself
is exact on one replica. Several replicas may each admit optimistically from a count a
round trip old, so the bound there is the limit plus what they admit within one round trip
while under half of it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

log = logging.getLogger("enclave.gateway")
HEADROOM = 0.5
# Counts in flight without a request waiting on them; beyond this, requests wait again.
MAX_BACKGROUND = 16


class RedisRateLimiter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.seen: dict[str, tuple[int, int]] = {}  # key -> (second, highest count returned)
        self.unsettled: dict[str, int] = {}  # key -> counts sent, not yet answered
        self.optimistic = 0  # requests admitted before their count came back
        self._background: set[asyncio.Task[int]] = set()

    async def allow(self, key_id: str, per_minute: int) -> bool:
        # A per-second window of rpm/60 keeps bursts bounded without a Lua script.
        per_second = max(1, per_minute // 60)
        second = int(time.time())
        seen = self.seen.get(key_id)
        far_below = (
            seen is not None
            and len(self._background) < MAX_BACKGROUND
            and seen[0] >= second - 1
            and seen[1] + self.unsettled.get(key_id, 0) < per_second * HEADROOM
        )
        counting = asyncio.ensure_future(self._count(key_id, second))
        if far_below:
            self.optimistic += 1
            self._background.add(counting)
            counting.add_done_callback(self._settled)
            return True
        return await counting <= per_second

    async def _count(self, key_id: str, second: int) -> int:
        self.unsettled[key_id] = self.unsettled.get(key_id, 0) + 1
        try:
            window = f"enclave:rl:{key_id}:{second}"
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(window)
            pipe.expire(window, 2)
            count, _ = await pipe.execute()
        finally:
            left = self.unsettled[key_id] - 1
            if left:
                self.unsettled[key_id] = left
            else:
                del self.unsettled[key_id]
        seen = self.seen.get(key_id)
        if seen is None or seen < (second, int(count)):
            self.seen[key_id] = (second, int(count))
        return int(count)

    def _settled(self, task: asyncio.Task[int]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Admitted already; the next request of this key waits for Redis again.
            log.warning("rate limit count failed: %s", task.exception())

    async def drain(self) -> None:
        """Wait for the counts still in flight (tests, shutdown)."""
        if self._background:
            await asyncio.wait(set(self._background))
