"""The gateway's side of a turn on a real NATS, against a scripted runtime: a runtime that
took the turn and went silent before any token is replaced (the turn is published again,
on a subject of its own), one that went silent after a token ends the stream with
`runtime_lost`, and a turn closed before its end is cancelled on `chat.cancel`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.bus import ensure_streams, event_bytes
from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import ChatMessage, ChatRequested, Delta, TurnCancelled, TurnEvent
from libs.rpc import Bus
from libs.settings import Settings
from services.gateway.turn_client import TurnClient

BEAT = event_bytes(TurnEvent(heartbeat=True))


@pytest.fixture
async def client(nc: NatsClient, inprocess_settings: Settings) -> AsyncIterator[TurnClient]:
    settings = inprocess_settings.model_copy(
        update={"heartbeat_s": 0.1, "stream_idle_s": 0.6, "gateway_timeout_s": 20.0}
    )
    await ensure_streams(nc, settings)
    turns = TurnClient(Bus(nc, settings))
    await turns.start()
    yield turns
    js = nc.jetstream()
    for info in await js.streams_info():
        if info.config.name and info.config.name.startswith(settings.bus_prefix.upper() + "_"):
            await js.delete_stream(info.config.name)


class Runtime:
    """Reads chat.requested and chat.cancel as a runtime replica would; what each attempt
    gets is scripted by the test."""

    def __init__(self, nc: NatsClient, client: TurnClient) -> None:
        self.nc = nc
        self.subjects = client.bus.subjects
        self.turns: asyncio.Queue[ChatRequested] = asyncio.Queue()
        self.cancels: list[TurnCancelled] = []

    async def start(self) -> Runtime:
        await self.nc.subscribe(self.subjects.chat_requested, cb=self._turn)
        await self.nc.subscribe(self.subjects.chat_cancel, cb=self._cancel)
        return self

    async def _turn(self, msg: Msg) -> None:
        self.turns.put_nowait(ChatRequested.model_validate_json(msg.data))

    async def _cancel(self, msg: Msg) -> None:
        self.cancels.append(TurnCancelled.model_validate_json(msg.data))

    async def send(self, turn: ChatRequested, event: TurnEvent | bytes) -> None:
        data = event if isinstance(event, bytes) else event_bytes(event)
        await self.nc.publish(turn.reply_subject, data)


def _event(request_id: str) -> ChatRequested:
    return ChatRequested(
        ctx=RequestContext(tenant="acme", request_id=request_id),
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
    )


async def test_a_runtime_silent_before_any_token_is_replaced(
    nc: NatsClient, client: TurnClient
) -> None:
    runtime = await Runtime(nc, client).start()
    stream = await client.start_turn(_event("r-retry"))
    first = await asyncio.wait_for(runtime.turns.get(), 5)
    await runtime.send(first, BEAT)  # it took the turn, then died
    reading = asyncio.ensure_future(stream.next_batch())
    second = await asyncio.wait_for(runtime.turns.get(), 10)
    assert second.attempt == 2 and second.reply_subject != first.reply_subject
    assert second.ctx.request_id == first.ctx.request_id
    # The silent one is told to stop, in case it only was slow; late events of it are
    # never read.
    assert [c.reply_subject for c in runtime.cancels] == [first.reply_subject]
    await runtime.send(first, TurnEvent(deltas=[Delta(content="stale")]))
    await runtime.send(second, TurnEvent(deltas=[Delta(content="ok")], done=True))
    (event,) = await asyncio.wait_for(reading, 5)
    assert event.deltas[0].content == "ok" and event.done
    await stream.close()
    assert len(runtime.cancels) == 1  # it ended: nothing to cancel


async def test_a_runtime_silent_after_a_token_ends_the_stream_with_runtime_lost(
    nc: NatsClient, client: TurnClient
) -> None:
    runtime = await Runtime(nc, client).start()
    stream = await client.start_turn(_event("r-lost"))
    turn = await asyncio.wait_for(runtime.turns.get(), 5)
    await runtime.send(turn, TurnEvent(deltas=[Delta(content="a")]))
    (event,) = await stream.next_batch()
    assert event.deltas[0].content == "a"
    for _ in range(5):  # alive for a while: heartbeats keep the stream open
        await runtime.send(turn, BEAT)
        await asyncio.sleep(0.2)
    with pytest.raises(EnclaveError) as lost:
        await asyncio.wait_for(stream.next_batch(), 5)
    assert lost.value.info.code == "runtime_lost" and lost.value.info.status == 503
    assert runtime.turns.empty()  # a token was out: never published again
    await stream.close()
    await asyncio.sleep(0.1)
    (cancel,) = runtime.cancels
    assert cancel.reason == "runtime_lost" and cancel.reply_subject == turn.reply_subject


async def test_a_turn_closed_before_its_end_is_cancelled(
    nc: NatsClient, client: TurnClient
) -> None:
    runtime = await Runtime(nc, client).start()
    stream = await client.start_turn(_event("r-gone"))
    turn = await asyncio.wait_for(runtime.turns.get(), 5)
    await stream.close()  # the client disconnected
    for _ in range(50):
        if runtime.cancels:
            break
        await asyncio.sleep(0.05)
    (cancel,) = runtime.cancels
    assert cancel.reason == "client_disconnected" and cancel.reply_subject == turn.reply_subject
    # The runtime's heartbeat hears the same: nobody waits for that inbox any more.
    reply = await nc.request(turn.reply_subject, BEAT, timeout=2)
    assert reply.headers is not None and reply.headers["enclave-inbox"] == "closed"


async def test_a_queued_turn_waits_for_a_runtime_however_long_it_is_silent(
    nc: NatsClient, client: TurnClient
) -> None:
    """No runtime took it yet (all busy or restarting): silence is no death, and the turn
    is not published twice."""
    stream = await client.start_turn(_event("r-queued"))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stream.next_batch(), 2.0)  # > stream_idle_s
    assert stream.event.attempt == 1
    await stream.close()


async def test_the_gateways_timeout_cancels_the_turn(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    settings = inprocess_settings.model_copy(
        update={"heartbeat_s": 0.1, "stream_idle_s": 5.0, "gateway_timeout_s": 0.8}
    )
    await ensure_streams(nc, settings)
    client = TurnClient(Bus(nc, settings))
    await client.start()
    runtime = await Runtime(nc, client).start()
    stream = await client.start_turn(_event("r-slow"))
    turn = await asyncio.wait_for(runtime.turns.get(), 5)

    async def alive() -> None:  # it holds the turn, but nothing comes of it
        while True:
            await runtime.send(turn, BEAT)
            await asyncio.sleep(0.1)

    beating = asyncio.ensure_future(alive())
    try:
        with pytest.raises(EnclaveError) as late:
            await asyncio.wait_for(stream.next_batch(), 10)
        assert late.value.info.status == 504
        await stream.close()
        await asyncio.sleep(0.1)
    finally:
        beating.cancel()
    (cancel,) = runtime.cancels
    assert cancel.reason == "timeout" and cancel.reply_subject == turn.reply_subject
