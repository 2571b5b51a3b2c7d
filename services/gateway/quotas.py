"""Exact limits and budgets: what is asked of the buckets, and what their answer means.

Pure. Four token buckets (requests and tokens per minute, per key and per tenant) and a
monthly token budget per tenant, all checked and taken together, atomically, by one Lua
script in Redis (adapters/redis_quotas.py), so every gateway replica sees the same counts
and none can admit past a limit. A bucket holds up to its per-minute limit and refills
continuously at limit/60 per second; a request needs one request token from each request
bucket and `reserve` tokens from each token bucket, where `reserve` is the prompt's
estimate plus `max_tokens`. At the end the reservation is settled from the real usage:
what was reserved and not used goes back, an underestimate is taken (a bucket may then
go below zero, and the next requests wait for it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from libs.errors import EnclaveError
from libs.events import ChatRequested

# The buckets, in the order the script takes them.
BUCKETS = ("key_rpm", "tenant_rpm", "key_tpm", "tenant_tpm")
TOO_LARGE = -1  # the script's answer: the request can never fit this bucket
OVER_BUDGET = -2  # the script's answer: the monthly budget would be exceeded
TOO_MANY_IN_FLIGHT = -3  # the script's answer: the tenant's concurrency limit is reached
CHARS_PER_TOKEN = 4  # the reservation's estimate of a prompt's tokens, before tokenizing
DEFAULT_MAX_TOKENS = 1024  # reserved when a request names no max_tokens


@dataclass(frozen=True)
class Limits:
    """0 means no limit of that kind."""

    key_rpm: int = 0
    tenant_rpm: int = 0
    key_tpm: int = 0
    tenant_tpm: int = 0
    monthly_tokens: int = 0
    concurrency: int = 0  # requests in flight at once, per tenant (inference routes)

    def capacities(self) -> tuple[int, int, int, int]:
        return (self.key_rpm, self.tenant_rpm, self.key_tpm, self.tenant_tpm)


LIMIT_FIELDS = ("key_rpm", "tenant_rpm", "key_tpm", "tenant_tpm", "monthly_tokens", "concurrency")


def tenant_limits(defaults: Limits, own: dict[str, int] | None) -> Limits:
    """The limits in force: the tenant's own (its record) where set, the settings' elsewhere."""
    values = {f: getattr(defaults, f) for f in LIMIT_FIELDS}
    values.update({k: int(v) for k, v in (own or {}).items() if k in values and v is not None})
    return Limits(**values)


@dataclass(frozen=True)
class Reservation:
    """What an admitted request took; `settle` gives back or takes the difference."""

    key_id: str
    tenant: str
    month: str
    limits: Limits
    reserved: int
    member: str = ""  # the request's id in the tenant's in-flight set ("": not counted)
    room: int = 0  # how many more such requests every limit would have admitted with it


class Headroom:
    """Whether a streamed turn may start while its admission is still being asked.

    The admission's answer says how much room every limit had left: how many more
    requests of its size would be admitted now (`Reservation.room`). While the last answer
    for a key, and the last for its tenant (any of its keys), left room, the key's next
    turns start at once, with the admission asked meanwhile, at
    most half of that room at a time; the client sees nothing of a turn before its
    admission (hot_path.open_turn), and a refused one is cancelled and answered 429. A turn
    larger than the answered request counts as as many of those as its size. Near a
    limit, after a refusal, or for a key not yet seen, a turn waits for its admission
    first. So what is admitted stays exact; what a refusal may cost is a turn
    started and cancelled, when another replica or key took the room meanwhile. Pure: one
    per gateway replica."""

    def __init__(self) -> None:
        # (tenant, key or "") -> (the last room, the reservation it was counted in)
        self.room: dict[tuple[str, str], tuple[int, int]] = {}
        self.ahead: dict[tuple[str, str], int] = {}  # (tenant, key or "") -> started ahead

    def start_ahead(self, tenant: str, key_id: str, reserve: int) -> int:
        """How much of the room this turn (`reserve` tokens) takes by starting before its
        admission, in requests of the answered size (a larger one counts as several); 0:
        it waits for its admission. Counted until `answered`."""
        both = ((tenant, key_id), (tenant, ""))
        units = 0
        for k in both:
            size = self.room.get(k, (0, 0))[1]
            if size <= 0 and reserve > 0:
                return 0
            units = max(units, 1 if reserve <= 0 else -(-reserve // size))
        if any(self.ahead.get(k, 0) + units > self.room.get(k, (0, 0))[0] // 2 for k in both):
            return 0
        for k in both:
            self.ahead[k] = self.ahead.get(k, 0) + units
        return units

    def answered(self, tenant: str, key_id: str, room: int, reserve: int, ahead: int) -> None:
        """An admission's answer: the room it left for requests of `reserve` tokens (0 when
        refused or not asked); `ahead`: what `start_ahead` counted for it."""
        for k in ((tenant, key_id), (tenant, "")):
            self.room[k] = (room, reserve)
            if ahead:
                left = self.ahead.get(k, ahead) - ahead
                if left > 0:
                    self.ahead[k] = left
                else:
                    self.ahead.pop(k, None)


@dataclass(frozen=True)
class UsageRow:
    """One day's tokens and requests of one key on one model (the admin usage API)."""

    day: str  # YYYYMMDD, UTC
    key_id: str
    model: str
    tokens: int
    requests: int


def reservation_size(prompt_chars: int, max_tokens: int | None) -> int:
    """Tokens to reserve: the prompt's estimate plus the most the answer may take."""
    answer = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
    return math.ceil(prompt_chars / CHARS_PER_TOKEN) + max(0, answer)


def event_reservation(event: ChatRequested) -> int:
    """The reservation of a chat or completion turn: its prompt, and `max_tokens` for each
    of its `n` answers."""
    chars = len(event.prompt or "") + sum(len(m.content or "") for m in event.messages)
    answer = event.params.max_tokens
    n = max(1, event.params.n)
    return reservation_size(chars, None if answer is None else answer * n) + (
        DEFAULT_MAX_TOKENS * (n - 1) if answer is None else 0
    )


def day_of(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%d")


def month_of(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m")


def seconds_to_next_month(now: datetime) -> int:
    now = now.astimezone(UTC)
    first = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return max(1, math.ceil((first - now).total_seconds()))


class Retryable(EnclaveError):
    """An error in OpenAI's shape that says when to try again (the Retry-After header)."""

    def __init__(self, status: int, message: str, code: str, retry_after_s: int) -> None:
        super().__init__(status, message, code)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)}


class RateLimited(Retryable):
    """429 in OpenAI's shape, with the seconds to wait for the Retry-After header."""

    def __init__(self, message: str, code: str, retry_after_s: int) -> None:
        super().__init__(429, message, code, retry_after_s)


# Redis holds the limits: while it is away nothing is admitted (the limits fail closed, as
# the guardrails do), and the client is told to come back.
LIMITS_UNAVAILABLE_RETRY_S = 2


def limits_unavailable() -> Retryable:
    return Retryable(
        503,
        "The rate limiter is not reachable, so the request was not admitted. "
        f"Please retry after {LIMITS_UNAVAILABLE_RETRY_S} s.",
        "limits_unavailable",
        LIMITS_UNAVAILABLE_RETRY_S,
    )


def error_headers(exc: EnclaveError) -> dict[str, str]:
    """The headers of an error response: Retry-After where the error says when to retry."""
    return exc.headers() if isinstance(exc, Retryable) else {}


def refusal(answer: int, bucket: int, limits: Limits, reserve: int, now: datetime) -> RateLimited:
    """The error for the script's refusal: `answer` is the wait in ms, or TOO_LARGE or
    OVER_BUDGET; `bucket` the index (1-based) of the bucket that refused."""
    if answer == TOO_MANY_IN_FLIGHT:
        return RateLimited(
            f"This tenant has {limits.concurrency} requests in flight already (its limit). "
            "Please retry after 1 s.",
            "concurrency_limit_exceeded",
            1,
        )
    if answer == OVER_BUDGET:
        return RateLimited(
            f"This tenant's monthly token budget ({limits.monthly_tokens}) is used up.",
            "insufficient_quota",
            seconds_to_next_month(now),
        )
    name = BUCKETS[bucket - 1]
    limit = limits.capacities()[bucket - 1]
    scope, unit = name.split("_")
    unit_words = "requests" if unit == "rpm" else "tokens"
    if answer == TOO_LARGE:
        raise EnclaveError(
            400,
            f"This request reserves {reserve} tokens ({unit_words} per minute per {scope}: "
            f"{limit}); lower max_tokens.",
            "tokens_exceed_limit",
            param="max_tokens",
        )
    wait_s = max(1, math.ceil(answer / 1000))
    return RateLimited(
        f"Rate limit reached for {unit_words} per minute per {scope} (limit {limit}). "
        f"Please retry after {wait_s} s.",
        "rate_limit_exceeded",
        wait_s,
    )
