"""No request can stall screening: linear patterns, caps, a budget per check, fair queueing."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path
from typing import Literal

import pytest
import yaml
from prometheus_client import REGISTRY

from libs.context import RequestContext
from libs.events import ChatMessage, GuardrailCheck, GuardrailVerdict
from libs.metrics import StageMetrics
from services.guardrails.adapters.policy_files import PolicyStore
from services.guardrails.bootstrap import decide
from services.guardrails.linear import UnsupportedPattern, compile_linear
from services.guardrails.policy import PolicyError
from services.guardrails.scheduler import (
    LIMITS,
    BudgetExceeded,
    FairScheduler,
    checkpoint,
    screen_fairly,
)
from services.guardrails.screen import Screener
from services.guardrails.secrets import scan

Direction = Literal["input", "output", "context"]


def check(tenant: str, text: str, direction: Direction = "input") -> GuardrailCheck:
    role = "assistant" if direction == "output" else "user"
    return GuardrailCheck(
        ctx=RequestContext(tenant=tenant, request_id=f"{tenant}-{len(text)}"),
        direction=direction,
        messages=[ChatMessage(role=role, content=text)],
    )


def test_the_aws_secret_pattern_no_longer_backtracks() -> None:
    # 16,000 x "awskey" kept a replica busy for 15 minutes with the backtracking pattern.
    assert scan("awskey" * 16000) == []
    found = scan("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert [s.type for s in found] == ["AWS_SECRET_KEY"]


def test_patterns_that_need_backtracking_are_refused_with_the_reason() -> None:
    with pytest.raises(UnsupportedPattern, match="look-around"):
        compile_linear(r"(?!x)\d+")
    # A classic catastrophic pattern is fine: RE2 runs it in linear time.
    assert compile_linear(r"(a+)+b").search("a" * 100_000) is None


def evil_tenant(folder: Path, **sections: object) -> PolicyStore:
    """A policy store whose tenant `evil` has these sections in its document."""
    (folder / "tenants").mkdir()
    doc = {"version": 1, "level": "tenant", "tenant": "evil", **sections}
    (folder / "tenants" / "evil.yaml").write_text(yaml.safe_dump(doc))
    return PolicyStore(folder)


def test_a_tenant_recognizer_that_needs_backtracking_is_rejected_at_load(tmp_path: Path) -> None:
    evil_tenant(tmp_path, pii={"custom": [{"name": "REF", "patterns": [r"(\w+)\1"]}]})
    with pytest.raises(PolicyError, match="linear time"):
        PolicyStore(tmp_path).get("evil")


async def test_one_tenants_flood_waits_behind_itself_not_in_front_of_others() -> None:
    scheduler = FairScheduler(workers=2, per_tenant=1, budget_s=30)
    done: list[str] = []

    def work(name: str) -> str:
        time.sleep(0.05)
        done.append(name)
        return name

    flood = [scheduler.run("a", partial(work, f"a{i}")) for i in range(12)]
    tasks = [asyncio.ensure_future(f) for f in flood]
    await asyncio.sleep(0.01)
    other = await scheduler.run("b", lambda: work("b"))
    assert other == "b"
    # b was served while most of a's flood still waited in a's own queue.
    assert done.index("b") <= 2
    assert sorted(await asyncio.gather(*tasks)) == sorted(f"a{i}" for i in range(12))
    scheduler.close()


async def test_a_check_past_its_budget_fails_alone_and_frees_its_worker() -> None:
    scheduler = FairScheduler(workers=1, per_tenant=1, budget_s=0.3)

    def forever() -> None:
        while True:
            checkpoint()
            time.sleep(0.01)

    with pytest.raises(BudgetExceeded):
        await scheduler.run("a", forever)
    # The one worker is free again: the next check (another tenant's) runs.
    assert await scheduler.run("b", lambda: "ok") == "ok"
    scheduler.close()


async def test_past_its_queue_bound_a_check_fails_closed_at_once() -> None:
    scheduler = FairScheduler(workers=1, per_tenant=1, budget_s=30, max_queued=2)
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def held() -> str:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        return "ran"

    running = asyncio.ensure_future(scheduler.run("a", held))  # takes the one worker
    waiting = [asyncio.ensure_future(scheduler.run(t, lambda: "ran")) for t in ("a", "b")]
    await asyncio.sleep(0.05)
    assert scheduler.queued() == 2
    verdict = await screen_fairly(
        scheduler, check("c", "hello"), lambda: GuardrailVerdict(allowed=True)
    )
    assert not verdict.allowed and verdict.rule == "limits.queue"
    assert verdict.error is not None and verdict.error.status == 503
    assert verdict.error.code == "guardrails_busy"
    release.set()
    assert await asyncio.gather(running, *waiting) == ["ran", "ran", "ran"]
    # With room again, checks run.
    assert (
        await screen_fairly(scheduler, check("c", "hi"), lambda: GuardrailVerdict(allowed=True))
    ).allowed
    scheduler.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> PolicyStore:
    return evil_tenant(
        tmp_path_factory.mktemp("policies"),
        pii={"custom": [{"name": "REF", "patterns": [r"(a+)+b", r"(\w+\s?)*x"], "context": ["a"]}]},
        output={"denied_patterns": [r"(.*a){20}"]},
    )


async def test_adversarial_megabytes_on_every_path_do_not_stall_another_tenant(
    screener: Screener, store: PolicyStore
) -> None:
    scheduler = FairScheduler()

    async def verdict(c: GuardrailCheck) -> tuple[GuardrailVerdict, float]:
        start = time.monotonic()
        v = await screen_fairly(scheduler, c, lambda: decide(screener, store, c))
        return v, time.monotonic() - start

    megabyte = "awskey" * 175_000  # 1.05 MB
    near_cap = {d: ("aaaa " * (LIMITS[d] // 5))[: LIMITS[d] - 10] for d in LIMITS}
    near_cap["output"] = ("awskey" * (LIMITS["output"] // 6))[: LIMITS["output"] - 10]
    attacks = [check("evil", megabyte, d) for d in ("input", "context", "output")]
    attacks += [check("evil", near_cap[d], d) for d in ("input", "context", "output")]
    running = [asyncio.ensure_future(verdict(c)) for c in attacks]
    await asyncio.sleep(0.05)
    ok, _ = await verdict(check("acme", "Please summarise the meeting notes from Tuesday."))
    assert ok.allowed and ok.error is None
    results = await asyncio.gather(*running)
    for (v, _took), c in zip(results[:3], attacks[:3], strict=True):
        assert v.error is not None and v.error.status == 413, c.direction
        assert v.error.code == "guardrail_input_too_large"
        assert str(LIMITS[c.direction]) in v.error.message
    for v, took in results[3:]:
        # Within the cap: answered, or failed closed at the budget; never longer.
        assert v.error is None or v.error.code == "guardrail_check_timeout"
        assert v.error is not None or v.allowed or v.rule
        assert took < scheduler.budget_s + 1.0
    scheduler.close()


async def test_the_busy_ratio_and_queue_depth_metrics_read_the_schedulers_own_state() -> None:
    scheduler = FairScheduler(workers=1, per_tenant=1, budget_s=5.0)
    StageMetrics("guardrails", "test-sched").sample_work(scheduler.busy_ratio, scheduler.queued)
    labels = {"service": "guardrails", "pool": "test-sched"}

    def sampled() -> tuple[float | None, float | None]:
        return (
            REGISTRY.get_sample_value("enclave_busy_ratio", labels),
            REGISTRY.get_sample_value("enclave_queue_depth", labels),
        )

    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        assert sampled() == (0.0, 0.0)

        def hold() -> str:
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return "done"

        first = asyncio.ensure_future(scheduler.run("acme", hold))
        second = asyncio.ensure_future(scheduler.run("acme", lambda: "next"))
        await asyncio.sleep(0.05)
        assert sampled() == (1.0, 1.0)  # one running on the only worker, one waiting
        release.set()
        assert await first == "done" and await second == "next"
        assert sampled() == (0.0, 0.0)
    finally:
        scheduler.close()
