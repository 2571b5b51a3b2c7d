"""The sliding-window buffer of a conversation in Redis: the last N turns, with a TTL.

Keys carry the tenant and the user, so a conversation id guessed by someone else reads
nothing, and a tenant's buffers are found (and deleted) by one pattern.
"""

from __future__ import annotations

from redis.asyncio import Redis

from libs.events import ChatMessage
from services.memory.chunking import approx_tokens

MAX_MESSAGES = 20
TTL_S = 24 * 3600


class ConversationBuffer:
    def __init__(self, redis: Redis, prefix: str, ttl_s: int = TTL_S) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:" if prefix else ""
        self.ttl_s = ttl_s

    def key(self, tenant: str, user: str, conversation: str) -> str:
        return f"{self.prefix}enclave:membuf:{tenant}:{user}:{conversation}"

    async def append(
        self, tenant: str, user: str, conversation: str, messages: list[ChatMessage]
    ) -> None:
        if not messages:
            return
        key = self.key(tenant, user, conversation)
        async with self.redis.pipeline(transaction=True) as p:
            p.rpush(key, *[m.model_dump_json() for m in messages])
            p.ltrim(key, -MAX_MESSAGES, -1)
            p.expire(key, self.ttl_s)
            await p.execute()

    async def recent(
        self, tenant: str, user: str, conversation: str, token_budget: int
    ) -> list[ChatMessage]:
        raw = await self.redis.lrange(self.key(tenant, user, conversation), 0, -1)
        out: list[ChatMessage] = []
        used = 0
        for item in reversed(raw):
            msg = ChatMessage.model_validate_json(item)
            cost = approx_tokens(msg.content or "")
            if used + cost > token_budget:
                break
            used += cost
            out.append(msg)
        return list(reversed(out))

    async def keys(self, tenant: str, user: str | None = None) -> list[bytes]:
        # Glob characters in a tenant or user name must not widen the match to others.
        who = _escape(user) if user is not None else "*"
        pattern = f"{_escape(self.prefix)}enclave:membuf:{_escape(tenant)}:{who}:*"
        return [k async for k in self.redis.scan_iter(match=pattern, count=500)]

    async def delete(self, tenant: str, user: str | None = None) -> int:
        keys = await self.keys(tenant, user)
        if keys:
            await self.redis.delete(*keys)
        return len(keys)


def _escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
