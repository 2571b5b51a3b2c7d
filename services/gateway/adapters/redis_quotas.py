"""Token buckets and monthly budgets in Redis: one Lua script, exact across replicas.

The script checks every bucket and the budget and takes from all of them, or from none,
in one atomic step on the Redis server, whose clock (TIME) every replica shares; so the
number admitted can never pass a limit, however many gateways ask at once. `settle`
runs the same script in its other mode. One round trip per admission and one per
settlement. (On Redis Cluster the keys of one call would need one hash slot: they are
tenant-tagged `{tenant}` for that.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway.quotas import (
    Limits,
    RateLimited,
    Reservation,
    UsageRow,
    day_of,
    limits_unavailable,
    month_of,
    refusal,
)

log = logging.getLogger("enclave.gateway.quotas")

BUCKET_TTL_MS = 120_000  # a full bucket is the same as none: let idle ones expire
BUDGET_TTL_S = 40 * 86400
USAGE_TTL_S = 400 * 86400  # a day's usage per key and model: kept for the admin API
LEASE_MS = 600_000  # an in-flight slot a crashed replica never released frees itself then
ROOM_UNLIMITED = 1_000_000_000  # the room reported when no limit binds

# KEYS: the four buckets (key rpm, tenant rpm, key tpm, tenant tpm), the budget, the
# tenant's in-flight set (a sorted set: request id -> lease end), the day's usage hash.
# ARGV: mode ('admit' | 'settle'), now in ms ('' = Redis TIME), the four capacities
# (0 = none), then for 'admit': tokens to reserve, monthly budget (0 = none), concurrency
# limit (0 = none), request id, lease in ms;
# for 'settle': tokens used minus tokens reserved, request id, usage field prefix
# ('' = record nothing), tokens used.
# admit -> {1, room, 0} admitted, every limit with room for `room` more such requests now;
# {0, wait_ms | -1 too large | -2 over budget |
# -3 too many in flight, bucket}.
SCRIPT = """
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[2])
end
local caps = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local levels = {}
for i = 1, 4 do
  if caps[i] > 0 then
    local s = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
    local tokens, ts = tonumber(s[1]), tonumber(s[2])
    if tokens == nil then
      tokens = caps[i]
    elseif now > ts then
      tokens = math.min(caps[i], tokens + (now - ts) * caps[i] / 60000)
    end
    levels[i] = tokens
  end
end
local function store(i, tokens)
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens), 'ts', now)
  redis.call('PEXPIRE', KEYS[i], BUCKET_TTL_MS)
end
if ARGV[1] == 'settle' then
  local delta = tonumber(ARGV[7])
  for i = 3, 4 do
    if caps[i] > 0 then store(i, math.min(caps[i], levels[i] - delta)) end
  end
  redis.call('INCRBY', KEYS[5], delta)
  if ARGV[8] ~= '' then redis.call('ZREM', KEYS[6], ARGV[8]) end
  if ARGV[9] ~= '' then
    redis.call('HINCRBY', KEYS[7], ARGV[9] .. '|tokens', tonumber(ARGV[10]))
    redis.call('HINCRBY', KEYS[7], ARGV[9] .. '|requests', 1)
    redis.call('EXPIRE', KEYS[7], USAGE_TTL_S)
  end
  return {1, 0, 0}
end
local reserve = tonumber(ARGV[7])
local budget = tonumber(ARGV[8])
local concurrency = tonumber(ARGV[9])
local costs = {1, 1, reserve, reserve}
local wait, which = 0, 0
for i = 1, 4 do
  if caps[i] > 0 then
    if costs[i] > caps[i] then return {0, -1, i} end
    if levels[i] < costs[i] then
      local w = math.ceil((costs[i] - levels[i]) * 60000 / caps[i])
      if w > wait then wait, which = w, i end
    end
  end
end
local used = 0
if budget > 0 and reserve > 0 then
  used = tonumber(redis.call('GET', KEYS[5]) or '0')
  if used + reserve > budget then return {0, -2, 5} end
end
if wait > 0 then return {0, wait, which} end
local flying = 0
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  flying = redis.call('ZCARD', KEYS[6])
  if flying >= concurrency then return {0, -3, 6} end
end
for i = 1, 4 do
  if caps[i] > 0 then store(i, levels[i] - costs[i]) end
end
if reserve > 0 then
  redis.call('INCRBY', KEYS[5], reserve)
  redis.call('EXPIRE', KEYS[5], BUDGET_TTL_S)
end
if concurrency > 0 then
  local lease = tonumber(ARGV[11])
  redis.call('ZADD', KEYS[6], now + lease, ARGV[10])
  redis.call('PEXPIRE', KEYS[6], lease)
end
-- The room left: how many more requests like this one every limit would admit now.
local room = ROOM_UNLIMITED
for i = 1, 4 do
  if caps[i] > 0 and costs[i] > 0 then
    room = math.min(room, math.floor((levels[i] - costs[i]) / costs[i]))
  end
end
if budget > 0 and reserve > 0 then
  room = math.min(room, math.floor((budget - used - reserve) / reserve))
end
if concurrency > 0 then room = math.min(room, concurrency - flying - 1) end
return {1, math.max(room, 0), 0}
"""
for _name, _value in (
    ("BUCKET_TTL_MS", BUCKET_TTL_MS),
    ("BUDGET_TTL_S", BUDGET_TTL_S),
    ("USAGE_TTL_S", USAGE_TTL_S),
    ("ROOM_UNLIMITED", ROOM_UNLIMITED),
):
    SCRIPT = SCRIPT.replace(_name, str(_value))


class RedisQuotas:
    def __init__(
        self,
        redis: Redis,
        prefix: str = "enclave:q",
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` (seconds) replaces Redis's TIME: tests freeze time with it."""
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self.script = redis.register_script(SCRIPT)

    def _keys(self, key_id: str, tenant: str, month: str, day: str = "") -> list[str]:
        p, t = self.prefix, f"{{{tenant}}}"
        return [
            f"{p}:rpm:{t}:key:{key_id}",
            f"{p}:rpm:{t}:tenant",
            f"{p}:tpm:{t}:key:{key_id}",
            f"{p}:tpm:{t}:tenant",
            f"{p}:budget:{t}:{month}",
            f"{p}:inflight:{t}",
            f"{p}:usage:{t}:{day}",
        ]

    def _now_ms(self) -> str:
        return "" if self.clock is None else str(int(self.clock() * 1000))

    def _wall(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC) if self.clock else datetime.now(UTC)

    async def admit(
        self,
        key_id: str,
        tenant: str,
        limits: Limits,
        reserve: int,
        request_id: str = "",
        lease_ms: int = LEASE_MS,
    ) -> Reservation:
        """Take one request and `reserve` tokens from every bucket (and, with a request id
        and a concurrency limit, a place in the tenant's in-flight set), or raise the 429."""
        now = self._wall()
        month = month_of(now)
        counted = request_id if limits.concurrency > 0 else ""
        try:
            answer = await self.script(
                keys=self._keys(key_id, tenant, month),
                args=[
                    "admit",
                    self._now_ms(),
                    *limits.capacities(),
                    reserve,
                    limits.monthly_tokens,
                    limits.concurrency if counted else 0,
                    counted,
                    lease_ms,
                ],
            )
        except RedisError as exc:
            log.warning("limits not reachable, request refused: %s", exc)
            raise limits_unavailable() from None
        ok, wait, bucket = (int(v) for v in answer)
        if not ok:
            raise refusal(wait, bucket, limits, reserve, now)
        return Reservation(key_id, tenant, month, limits, reserve, counted, room=wait)

    async def settle(self, reservation: Reservation, used: int, model: str = "") -> None:
        """Give back what was reserved and not used (or take what was used beyond it), free
        the request's in-flight place, and count its tokens in the day's usage of its key
        and model (when a model is named)."""
        r = reservation
        used = max(0, used)
        await self.script(
            keys=self._keys(r.key_id, r.tenant, r.month, day_of(self._wall())),
            args=[
                "settle",
                self._now_ms(),
                *r.limits.capacities(),
                used - r.reserved,
                r.member,
                f"{r.key_id}|{model}" if model else "",
                used,
            ],
        )

    async def used_this_month(self, tenant: str) -> int:
        value = await self.redis.get(self._keys("", tenant, month_of(self._wall()))[4])
        return int(value or 0)

    async def in_flight(self, tenant: str) -> int:
        return int(await self.redis.zcard(self._keys("", tenant, "")[5]))

    async def usage(self, tenant: str, days: list[str]) -> list[UsageRow]:
        """Tokens and requests of the tenant per day, key and model (the admin API)."""
        pipe = self.redis.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(self._keys("", tenant, "", day)[6])
        rows: list[UsageRow] = []
        for day, found in zip(days, await pipe.execute(), strict=True):
            merged: dict[tuple[str, str], dict[str, int]] = {}
            for field, value in found.items():
                name = field.decode() if isinstance(field, bytes) else str(field)
                key_id, rest = name.split("|", 1)
                model, metric = rest.rsplit("|", 1)
                merged.setdefault((key_id, model), {})[metric] = int(value)
            for (key_id, model), counts in sorted(merged.items()):
                rows.append(
                    UsageRow(
                        day=day,
                        key_id=key_id,
                        model=model,
                        tokens=counts.get("tokens", 0),
                        requests=counts.get("requests", 0),
                    )
                )
        return rows

    async def forget_tenant(self, tenant: str) -> int:
        """Drop every counter of a tenant (its erasure): buckets, budget, usage."""
        removed = 0
        async for key in self.redis.scan_iter(match=f"{self.prefix}:*:{{{tenant}}}*"):
            removed += int(await self.redis.delete(key))
        return removed


__all__ = ["RateLimited", "RedisQuotas"]
