"""The failover logic, pure: order, before the first token only, bounds, breakers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from libs.failover import AttemptFailed, Breakers, CircuitBreaker, NoPoolAnswered, run_with_failover


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pools(behaviour: dict[str, str], calls: list[str]) -> Callable[[str], Awaitable[str]]:
    async def attempt(pool: str) -> str:
        calls.append(pool)
        match behaviour[pool]:
            case "ok":
                return f"answer of {pool}"
            case "fails":
                raise AttemptFailed(pool, "HTTP 500", started=False)
            case _:
                raise AttemptFailed(pool, "cut mid-stream", started=True)

    return attempt


async def test_in_order_the_first_that_answers() -> None:
    calls: list[str] = []
    attempt = _pools({"a": "fails", "b": "ok", "c": "ok"}, calls)
    answered = await run_with_failover(["a", "b", "c"], attempt, Breakers())
    assert answered.pool == "b" and answered.result == "answer of b"
    assert calls == ["a", "b"]
    assert [f.pool for f in answered.failures] == ["a"]


async def test_no_retry_after_the_first_token() -> None:
    calls: list[str] = []
    attempt = _pools({"a": "cut", "b": "ok"}, calls)
    with pytest.raises(AttemptFailed) as caught:
        await run_with_failover(["a", "b"], attempt, Breakers())
    assert caught.value.started and calls == ["a"]


async def test_attempts_are_bounded() -> None:
    calls: list[str] = []
    attempt = _pools({p: "fails" for p in "abcde"} | {"f": "ok"}, calls)
    with pytest.raises(NoPoolAnswered) as caught:
        await run_with_failover(list("abcdef"), attempt, Breakers(), max_attempts=3)
    assert calls == ["a", "b", "c"]
    assert len(caught.value.failures) == 3


async def test_an_open_breaker_skips_its_pool_until_the_cooldown() -> None:
    clock = Clock()
    breakers = Breakers(threshold=2, cooldown_s=30, clock=clock)
    calls: list[str] = []
    behaviour = {"a": "fails", "b": "ok"}
    attempt = _pools(behaviour, calls)
    for _ in range(2):
        assert (await run_with_failover(["a", "b"], attempt, breakers)).pool == "b"
    assert breakers["a"].state == "open"
    calls.clear()
    assert (await run_with_failover(["a", "b"], attempt, breakers)).pool == "b"
    assert calls == ["b"]  # a skipped while open
    clock.now += 30
    behaviour["a"] = "ok"
    calls.clear()
    assert (await run_with_failover(["a", "b"], attempt, breakers)).pool == "a"  # trial
    assert calls == ["a"] and breakers["a"].state == "closed"


async def test_every_breaker_open_is_reported() -> None:
    clock = Clock()
    breakers = Breakers(threshold=1, cooldown_s=30, clock=clock)
    attempt = _pools({"a": "fails"}, [])
    with pytest.raises(NoPoolAnswered):
        await run_with_failover(["a"], attempt, breakers)
    with pytest.raises(NoPoolAnswered) as caught:
        await run_with_failover(["a"], attempt, breakers)
    assert caught.value.skipped == ["a"] and "circuit open" in str(caught.value)


def test_half_open_lets_one_trial_through_and_a_failed_trial_reopens() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=10, clock=clock)
    breaker.failed()
    assert not breaker.allows()
    clock.now += 10
    assert breaker.state == "half_open"
    assert breaker.allows()
    assert not breaker.allows()  # only one trial at a time
    breaker.failed()
    assert breaker.state == "open"
    clock.now += 9.9
    assert not breaker.allows()
    clock.now += 0.1
    assert breaker.allows()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allows() and breaker.allows()
