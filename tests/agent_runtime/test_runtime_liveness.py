"""The runtime's side of stream liveness, built by its bootstrap on a real NATS: it tells
the gateway it holds a turn (at once, then every `heartbeat_s`); a turn whose client is
gone (`chat.cancel`, or its inbox closed) stops and cancels its generation on the worker;
a worker that goes silent before its first token is replaced by another of the pool, and
one silent after a token ends the turn with `worker_lost`.

Stand-ins on the same NATS play the guardrails, the router and the workers of pool `p`."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient

from libs.bus import event_bytes
from libs.context import RUNTIME_HEADER, RequestContext
from libs.events import (
    ChatMessage,
    ChatRequested,
    Delta,
    GenerateAccepted,
    GenerateRequest,
    GenerationCancelled,
    GuardrailCheck,
    GuardrailVerdict,
    RouteReply,
    RouteRequest,
    TurnCancelled,
    TurnEvent,
)
from libs.rpc import Inbox, ReplyRouter, serve
from libs.service import running
from libs.settings import Settings
from services.agent_runtime.bootstrap import Runtime, build


class Pool:
    """Guardrails that screen nothing, a router to pool `p`, and its workers: each
    generation follows the next script in `scripts` ("drip": a token every 50 ms with
    heartbeats until cancelled; "die": accepts, then silence; "die-after-token")."""

    def __init__(self, nc: NatsClient, settings: Settings) -> None:
        self.nc = nc
        self.subjects = settings.subjects
        self.scripts: list[str] = []
        self.generated: list[GenerateRequest] = []
        self.cancels: list[GenerationCancelled] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.timeout_s = 30.0  # the pool's wait for each token

    async def start(self) -> Pool:
        s = self.subjects
        for subject in (s.guardrails_input, s.guardrails_output):
            await serve(self.nc, subject, GuardrailCheck, self.guard, queue="guardrails")
        await serve(self.nc, s.inference_route, RouteRequest, self.route, queue="router")
        await serve(self.nc, s.inference_worker("p"), GenerateRequest, self.generate, queue="p")
        await self.nc.subscribe(s.inference_cancel, cb=self._cancel)
        return self

    async def _cancel(self, msg: object) -> None:
        self.cancels.append(GenerationCancelled.model_validate_json(msg.data))  # type: ignore[attr-defined]

    async def guard(self, check: GuardrailCheck) -> GuardrailVerdict:
        return GuardrailVerdict(
            allowed=True, texts=[m.content or "" for m in check.messages], screen_output=False
        )

    async def route(self, request: RouteRequest) -> RouteReply:
        return RouteReply(pool="p", timeout_s=self.timeout_s)

    async def generate(self, request: GenerateRequest) -> GenerateAccepted:
        self.generated.append(request)
        script = self.scripts.pop(0) if self.scripts else "drip"
        task = asyncio.ensure_future(self._stream(request, script))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return GenerateAccepted(accepted=True, worker="w", timeout_s=request.timeout_s)

    async def _stream(self, request: GenerateRequest, script: str) -> None:
        if script == "die":
            return
        if script == "stuck":  # alive (heartbeats), but no token comes
            while not any(c.deltas_subject == request.deltas_subject for c in self.cancels):
                await self.nc.publish(
                    request.deltas_subject, event_bytes(TurnEvent(heartbeat=True))
                )
                await asyncio.sleep(0.05)
            return

        async def out(event: TurnEvent) -> None:
            data = event_bytes(event)
            if request.client_subject:
                await self.nc.publish(request.client_subject, data, headers=request.client_headers)
            await self.nc.publish(request.deltas_subject, data)

        await asyncio.sleep(0.05)
        await out(TurnEvent(deltas=[Delta(content="tok ")]))
        if script == "die-after-token":
            return
        if script == "short":
            await out(TurnEvent(deltas=[Delta(content="end", finish_reason="stop")], done=True))
            return
        for _ in range(400):
            if any(c.deltas_subject == request.deltas_subject for c in self.cancels):
                return
            await asyncio.sleep(0.05)
            await out(TurnEvent(deltas=[Delta(content="tok ")]))
            await self.nc.publish(request.deltas_subject, event_bytes(TurnEvent(heartbeat=True)))


@pytest.fixture
async def runtime(
    nc: NatsClient, inprocess_settings: Settings
) -> AsyncIterator[tuple[Runtime, Pool, ReplyRouter]]:
    settings = inprocess_settings.model_copy(
        update={"heartbeat_s": 0.1, "stream_idle_s": 0.8, "guard_passthrough_s": 0.0}
    )
    pool = await Pool(nc, settings).start()
    gateway = await ReplyRouter(nc, settings.subjects.chat_stream("gw1", "")).start()
    async with running(settings, "agent_runtime", build) as service:
        assert isinstance(service, Runtime)
        yield service, pool, gateway
        for task in list(pool.tasks):
            task.cancel()


async def _turn(nc: NatsClient, runtime: Runtime, gateway: ReplyRouter) -> Inbox:
    request_id = "r" + secrets.token_hex(4)
    inbox = gateway.open(request_id)
    event = ChatRequested(
        ctx=RequestContext(tenant="acme", request_id=request_id),
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        reply_subject=inbox.subject,
    )
    await nc.jetstream().publish(runtime.bus.subjects.chat_requested, event_bytes(event))
    return inbox


async def _events(inbox: Inbox, until: object, timeout: float = 10.0) -> list[TurnEvent]:
    got: list[TurnEvent] = []
    while not until(got):  # type: ignore[operator]
        msg = await inbox.next(timeout)
        assert msg is not None, got
        got.append(TurnEvent.model_validate_json(msg.data))
    return got


async def _until(condition: object, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_the_runtime_says_at_once_that_it_holds_the_turn_then_keeps_saying_it(
    nc: NatsClient, runtime: tuple[Runtime, Pool, ReplyRouter]
) -> None:
    service, _, gateway = runtime
    inbox = await _turn(nc, service, gateway)
    first = await inbox.next(10.0)
    assert first is not None and first.headers is not None
    assert TurnEvent.model_validate_json(first.data).heartbeat
    assert first.headers[RUNTIME_HEADER] == service.ports.replica
    got = await _events(inbox, lambda g: sum(bool(e.heartbeat) for e in g) >= 3)
    assert any(e.deltas for e in got)  # the worker streams to the client meanwhile
    inbox.close()


async def test_chat_cancel_stops_the_turn_and_its_generation(
    nc: NatsClient, runtime: tuple[Runtime, Pool, ReplyRouter]
) -> None:
    service, pool, gateway = runtime
    inbox = await _turn(nc, service, gateway)
    await _events(inbox, lambda g: any(e.deltas for e in g))
    (request,) = pool.generated
    cancel = TurnCancelled(
        ctx=request.ctx, reply_subject=inbox.subject, reason="client_disconnected"
    )
    await nc.publish(service.bus.subjects.chat_cancel, event_bytes(cancel))
    await _until(lambda: pool.cancels and not service.turns)
    (cancelled,) = pool.cancels
    assert cancelled.deltas_subject == request.deltas_subject
    assert cancelled.reason == "cancelled"


async def test_a_turn_whose_gateway_stopped_waiting_stops_by_its_heartbeat(
    nc: NatsClient, runtime: tuple[Runtime, Pool, ReplyRouter]
) -> None:
    service, pool, gateway = runtime
    inbox = await _turn(nc, service, gateway)
    await _events(inbox, lambda g: any(e.deltas for e in g))
    inbox.close()  # no word: the gateway replica died, or its client went
    await _until(lambda: pool.cancels and not service.turns)
    assert pool.cancels[0].deltas_subject == pool.generated[0].deltas_subject


async def test_a_worker_dead_before_its_first_token_is_replaced(
    nc: NatsClient, runtime: tuple[Runtime, Pool, ReplyRouter]
) -> None:
    service, pool, gateway = runtime
    pool.scripts = ["die", "short"]
    inbox = await _turn(nc, service, gateway)
    got = await _events(inbox, lambda g: any(e.done for e in g))
    assert [e.error for e in got if e.error] == []
    assert "".join(d.content for e in got for d in e.deltas) == "tok end"
    assert len(pool.generated) == 2
    # The dead one's generation was cancelled, in case it only was slow.
    assert [c.reason for c in pool.cancels] == ["worker_lost"]
    inbox.close()


async def test_a_worker_dead_after_a_token_ends_the_turn_with_worker_lost(
    nc: NatsClient, runtime: tuple[Runtime, Pool, ReplyRouter]
) -> None:
    service, pool, gateway = runtime
    pool.scripts = ["die-after-token"]
    inbox = await _turn(nc, service, gateway)
    got = await _events(inbox, lambda g: any(e.done for e in g))
    (last,) = [e for e in got if e.error]
    assert last.done and last.error is not None and last.error.code == "worker_lost"
    assert sum(len(e.deltas) for e in got) == 1  # no token twice, none lost
    assert len(pool.generated) == 1
    inbox.close()


async def test_the_runtimes_timeout_cancels_the_generation(
    nc: NatsClient, runtime: tuple[Runtime, Pool, ReplyRouter]
) -> None:
    service, pool, gateway = runtime
    pool.scripts, pool.timeout_s = ["stuck"], 0.5
    inbox = await _turn(nc, service, gateway)
    got = await _events(inbox, lambda g: any(e.done for e in g))
    (last,) = [e for e in got if e.error]
    assert last.error is not None and last.error.status == 504  # heartbeats are no tokens
    await _until(lambda: pool.cancels)
    (cancel,) = pool.cancels
    assert cancel.reason == "timeout" and cancel.deltas_subject == pool.generated[0].deltas_subject
    inbox.close()


@pytest.mark.parametrize("stopped_by", ["its heartbeat", "chat.cancel"])
async def test_a_turn_that_lost_its_cancel_is_cancelled_again_by_its_next_beat(
    runtime: tuple[Runtime, Pool, ReplyRouter], stopped_by: str
) -> None:
    """A cancel that lands as an awaited answer arrives can be lost (nats-py's request runs
    on Python 3.11's `asyncio.wait_for`): the heartbeat stops the turn again each beat,
    whether it found the client gone itself or the turn was cancelled elsewhere while the
    gateway's inbox is still open."""
    service, _, gateway = runtime
    inbox = gateway.open("r-left")
    cancels: list[int] = []

    async def turn() -> None:
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancels.append(1)
                if len(cancels) > 1:
                    raise  # the first one is lost, as inside wait_for

    work = asyncio.ensure_future(turn())
    if stopped_by == "its heartbeat":
        inbox.close()  # its client left
    else:
        await asyncio.sleep(0)
        work.cancel()  # as RunningTurns.cancel does; lost below
    event = ChatRequested(
        ctx=RequestContext(tenant="acme", request_id="r-left"),
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        reply_subject=inbox.subject,
    )
    await asyncio.wait_for(service._heartbeat(event, work), 10.0)
    assert work.cancelled() and len(cancels) == 2
    inbox.close()
