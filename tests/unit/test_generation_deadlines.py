"""Which limit ended a wait for a worker's token decides the error, not a clock read after
the wait: the event loop's timers (uvloop's clock moves in milliseconds) may wake a wait a
millisecond before `time.monotonic()` reaches its deadline. A pool's token timeout then read
as a lost worker: a 503 `worker_lost` and a retry, where a 504 `upstream_timeout` was due
(seen in CI on the slow pool of tests/e2e/test_errors.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from libs.bus import event_bytes
from libs.context import RequestContext
from libs.events import ChatMessage, GenerateAccepted, GenerateRequest, TurnEvent
from libs.generation import Generation, GenerationFailed


@dataclass
class Said:
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


class EarlyInbox:
    """An inbox whose waits end at once, as a timer that fires early would end them."""

    def __init__(self, *messages: Said) -> None:
        self.messages = list(messages)
        self.subject = "deltas.test"

    async def next(self, timeout: float) -> Said | None:
        await asyncio.sleep(0)
        return self.messages.pop(0) if self.messages else None

    def close(self) -> None:
        pass


def generation(inbox: EarlyInbox, timeout_s: float) -> Generation:
    accepting: asyncio.Future[GenerateAccepted] = asyncio.get_running_loop().create_future()
    accepting.set_result(GenerateAccepted(accepted=True, worker="w1", timeout_s=timeout_s))
    request = GenerateRequest(
        ctx=RequestContext(tenant="t", request_id="r1"),
        model="enclave-slow",
        messages=[ChatMessage(role="user", content="hi")],
        deltas_subject=inbox.subject,
    )
    return Generation(request, inbox, accepting, upstream_timeout_s=60, idle_s=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("heartbeat_first", [True, False])
async def test_a_wait_that_ends_at_the_token_deadline_is_an_upstream_timeout(
    heartbeat_first: bool,
) -> None:
    beats = [Said(event_bytes(TurnEvent(heartbeat=True)))] if heartbeat_first else []
    with pytest.raises(GenerationFailed) as failed:
        await generation(EarlyInbox(*beats), timeout_s=0.5).next()
    assert failed.value.info.status == 504
    assert failed.value.info.code == "upstream_timeout"


async def test_a_wait_that_ends_at_the_silence_limit_is_a_lost_worker() -> None:
    # The pool allows a minute per token; the worker's silence limit (5 s) ends the wait.
    beat = Said(event_bytes(TurnEvent(heartbeat=True)))
    with pytest.raises(GenerationFailed) as failed:
        await generation(EarlyInbox(beat), timeout_s=60).next()
    assert failed.value.info.status == 503
    assert failed.value.info.code == "worker_lost"
