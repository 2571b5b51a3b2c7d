"""The one way a service makes its Redis client: a bounded pool that waits for a free
connection instead of failing.

redis-py's default pool fails a command with `MaxConnectionsError` once 100 connections
are in use; under a burst (1,000 streamed requests at once, tests/gateway/test_burst.py)
that was a 500 for most of them. A `BlockingConnectionPool` makes the excess wait for a
connection (at most `redis_wait_s`) instead: fewer sockets, and no error on a burst.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from libs.settings import Settings


def redis_client(settings: Settings) -> Redis:
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_wait_s,
        # Bounded waits on the socket too: a Redis that hangs fails the command (the gateway
        # answers 503 limits_unavailable) instead of holding the request forever.
        socket_connect_timeout=2,
        socket_timeout=5,
    )
    return Redis(connection_pool=pool)
