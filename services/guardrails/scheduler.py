"""No request can stall screening: size caps, CPU work off the event loop, a time budget per
check, and fair queueing across tenants.

- **Size caps per direction** (`LIMITS`, characters over all messages): a check above its
  cap is answered at once with a 413 `guardrail_input_too_large` naming the cap, before
  any work.
- **Off the event loop**: every check runs on a small thread pool, so a replica keeps
  answering the bus (and its other checks) while one works.
- **Fair queueing**: each check arrives on its own task (the subscription does not hand
  them over one at a time); each tenant has its own FIFO; free workers take the next job
  round-robin over the tenants that have one, and one tenant holds at most `per_tenant`
  workers (one fewer than there are), so one tenant's flood waits behind itself, a worker is
  always free for another tenant's check, and a tenant alone still screens its input and
  output windows side by side.
- **A bounded queue**: past `max_queued` waiting checks a replica answers a new one at once
  with a 503 `guardrails_busy` (fail closed), instead of holding every check of a flood in
  memory until its budget runs out.
- **A time budget per check**: a check not answered within `budget_s` (queueing included)
  fails closed alone, with a 503 `guardrail_check_timeout`; the work itself stops at its next
  `checkpoint()` (the PII finder and the injection scorer call it between chunks), so a
  worker is not held for long after the budget either.

Every pattern is linear-time (services/guardrails/linear.py), so the caps bound each
check's work and the budget is a backstop, not the defence.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from libs.errors import ErrorInfo
from libs.events import GuardrailCheck, GuardrailVerdict

T = TypeVar("T")

# Characters over all messages of one check. A chat turn's input is far below the input cap
# (~50k tokens); an output check is one window (~160 characters) or, through
# POST /v1/guardrails/check, a whole answer.
LIMITS: dict[str, int] = {"input": 262_144, "context": 262_144, "output": 65_536}
BUDGET_S = 3.0
WORKERS = 3
PER_TENANT = 2
MAX_QUEUED = 512


class BudgetExceeded(Exception):
    """The check ran past its time budget; it fails closed."""


class Overloaded(Exception):
    """The replica's queue is full; the check fails closed at once."""


_local = threading.local()


def checkpoint() -> None:
    """Called by long-running work between chunks: stops it once its check's budget is spent."""
    deadline = getattr(_local, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise BudgetExceeded


def oversize(check: GuardrailCheck, limits: dict[str, int] = LIMITS) -> ErrorInfo | None:
    size = sum(len(m.content or "") for m in check.messages)
    cap = limits[check.direction]
    if size <= cap:
        return None
    return ErrorInfo(
        status=413,
        message=(
            f"The {check.direction} to screen is {size} characters; the guardrails screen "
            f"at most {cap} characters per {check.direction} check."
        ),
        code="guardrail_input_too_large",
        param="messages",
    )


def busy(direction: str, queued: int) -> ErrorInfo:
    return ErrorInfo(
        status=503,
        message=(
            f"The guardrails have {queued} checks waiting; this {direction} check was not "
            "run and nothing was let through. Try again shortly."
        ),
        code="guardrails_busy",
    )


def timed_out(direction: str, budget_s: float) -> ErrorInfo:
    return ErrorInfo(
        status=503,
        message=(
            f"The {direction} check did not finish within its budget of {budget_s:g} s; "
            "nothing was let through. Try again, or send less text."
        ),
        code="guardrail_check_timeout",
    )


@dataclass
class _Job(Generic[T]):
    fn: Callable[[], T]
    future: asyncio.Future[T]
    deadline: float


@dataclass
class FairScheduler:
    workers: int = WORKERS
    per_tenant: int = PER_TENANT
    budget_s: float = BUDGET_S
    max_queued: int = MAX_QUEUED
    _queues: dict[str, deque[_Job[Any]]] = field(default_factory=dict)
    _running: dict[str, int] = field(default_factory=dict)
    _busy: int = 0
    _pool: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="guardrails-check")

    async def run(self, tenant: str, fn: Callable[[], T]) -> T:
        """fn() on a worker, in this tenant's turn; BudgetExceeded past the budget,
        Overloaded at once when `max_queued` checks wait already."""
        if self.queued() >= self.max_queued:
            raise Overloaded
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(fn, loop.create_future(), time.monotonic() + self.budget_s)
        self._queues.setdefault(tenant, deque()).append(job)
        self._dispatch()
        try:
            async with asyncio.timeout(self.budget_s):
                return await asyncio.shield(job.future)
        except TimeoutError:
            # Not started: _dispatch skips it. Started: its next checkpoint() stops it.
            job.future.cancel()
            raise BudgetExceeded from None

    def busy_ratio(self) -> float:
        """Share of the workers running a check now (read by /metrics from its thread)."""
        return min(self._busy, self.workers) / self.workers

    def queued(self) -> int:
        """Checks waiting for a worker (one that ran out of budget waiting counts until its
        turn comes and is skipped)."""
        return sum(len(queue) for queue in list(self._queues.values()))

    def _next(self) -> tuple[str, _Job[Any]] | None:
        for tenant in list(self._queues):
            queue = self._queues[tenant]
            if self._running.get(tenant, 0) >= self.per_tenant:
                continue
            job = queue.popleft()
            # Round-robin: the tenant served goes to the back of the line.
            del self._queues[tenant]
            if queue:
                self._queues[tenant] = queue
            return tenant, job
        return None

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._busy < self.workers:
            picked = self._next()
            if picked is None:
                return
            tenant, job = picked
            if job.future.done():
                continue
            self._busy += 1
            self._running[tenant] = self._running.get(tenant, 0) + 1
            assert self._pool is not None
            work = loop.run_in_executor(self._pool, _with_deadline, job.fn, job.deadline)
            work.add_done_callback(partial(self._done, tenant, job))

    def _done(self, tenant: str, job: _Job[Any], work: asyncio.Future[Any]) -> None:
        self._busy -= 1
        self._running[tenant] -= 1
        if not self._running[tenant]:
            del self._running[tenant]
        exc = work.exception()
        if not job.future.done():
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(work.result())
        self._dispatch()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _with_deadline(fn: Callable[[], T], deadline: float) -> T:
    _local.deadline = deadline
    try:
        if time.monotonic() > deadline:
            raise BudgetExceeded
        return fn()
    finally:
        _local.deadline = None


def carried(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn`, to run on another thread under this thread's check budget (if it has one)."""
    deadline = getattr(_local, "deadline", None)
    return fn if deadline is None else partial(_with_deadline, fn, deadline)


def _refused(rule: str, error: ErrorInfo) -> GuardrailVerdict:
    """A check the guardrails did not run (too big, queue full, out of budget): blocked."""
    return GuardrailVerdict(allowed=False, rule=rule, reasons=[error.message], error=error)


async def screen_fairly(
    scheduler: FairScheduler, check: GuardrailCheck, decide: Callable[[], GuardrailVerdict]
) -> GuardrailVerdict:
    """The verdict on one check under the caps, the budget and the tenant's turn."""
    too_big = oversize(check)
    if too_big is not None:
        return _refused("limits.size", too_big)
    try:
        return await scheduler.run(check.ctx.tenant, decide)
    except Overloaded:
        return _refused("limits.queue", busy(check.direction, scheduler.queued()))
    except BudgetExceeded:
        return _refused("limits.budget", timed_out(check.direction, scheduler.budget_s))
