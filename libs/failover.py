"""Failover across worker pools: ordered, before the first token only, bounded, with a
circuit breaker per pool.

A route may list several pools in order (an external provider first, the local model
after it, or two providers). `run_with_failover` tries them in that order, skipping a pool
whose breaker is open; an attempt that fails before it produced its first token moves on
to the next pool; one that fails after has already streamed to the client, so its error
is the answer (a retry would repeat or contradict what the client saw). At most
`max_attempts` attempts are made. Each pool's breaker opens after `threshold` failures in
a row and lets one trial through after `cooldown_s` (half-open); a success closes it.

Pure apart from the injected `attempt` (which talks to a pool) and clock.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class AttemptFailed(Exception):
    """An attempt's failure; `started` when the pool had already produced a token."""

    def __init__(self, pool: str, reason: str, started: bool) -> None:
        super().__init__(f"{pool}: {reason}")
        self.pool = pool
        self.reason = reason
        self.started = started


class NoPoolAnswered(Exception):
    def __init__(self, failures: list[AttemptFailed], skipped: list[str]) -> None:
        reasons = "; ".join(str(f) for f in failures) or "no attempt made"
        if skipped:
            reasons += f" (circuit open: {', '.join(skipped)})"
        super().__init__(f"no pool answered: {reasons}")
        self.failures = failures
        self.skipped = skipped


@dataclass
class CircuitBreaker:
    threshold: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    trial: bool = field(default=False)  # a half-open trial is in flight

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allows(self) -> bool:
        """May a request go to this pool now (takes the half-open trial if it is one)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.trial:
            self.trial = True
            return True
        return False

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial = False

    def failed(self) -> None:
        self.failures += 1
        if self.trial or self.failures >= self.threshold:
            self.opened_at = self.clock()  # (re)open: a failed trial waits a full cooldown
        self.trial = False


@dataclass
class Breakers:
    """One breaker per pool, made on first use."""

    threshold: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    pools: dict[str, CircuitBreaker] = field(default_factory=dict)

    def __getitem__(self, pool: str) -> CircuitBreaker:
        breaker = self.pools.get(pool)
        if breaker is None:
            breaker = self.pools[pool] = CircuitBreaker(self.threshold, self.cooldown_s, self.clock)
        return breaker


@dataclass(frozen=True)
class Answered(Generic[T]):
    pool: str  # which pool answered (reported to the client and the audit event)
    result: T
    failures: tuple[AttemptFailed, ...] = ()


async def run_with_failover(
    pools: Sequence[str],
    attempt: Callable[[str], Awaitable[T]],
    breakers: Breakers,
    max_attempts: int = 3,
) -> Answered[T]:
    """The first pool's answer that succeeds, in order; raises AttemptFailed when a pool
    failed after its first token, NoPoolAnswered when none could answer."""
    failures: list[AttemptFailed] = []
    skipped: list[str] = []
    for pool in pools:
        if len(failures) >= max_attempts:
            break
        breaker = breakers[pool]
        if not breaker.allows():
            skipped.append(pool)
            continue
        try:
            result = await attempt(pool)
        except AttemptFailed as failure:
            breaker.failed()
            if failure.started:
                raise
            failures.append(failure)
            continue
        breaker.succeeded()
        return Answered(pool, result, tuple(failures))
    raise NoPoolAnswered(failures, skipped)
