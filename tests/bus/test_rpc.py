"""The bus client on a real NATS: typed ask, one error mapping, handlers on both
transports, replies routed by key, and the generation client against a stand-in pool."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel

from libs import events as ev
from libs.bus import ensure_streams, stream_configs
from libs.context import WORKER_HEADER, RequestContext
from libs.errors import EnclaveError
from libs.generation import GenerationClient, GenerationFailed, RouteCache
from libs.rpc import Bus, Peer, ReplyRouter, leave, serve, serve_alive, serve_broker, settled
from libs.settings import Settings
from tests.infra import Infra


class Ping(BaseModel):
    n: int


class Pong(BaseModel):
    n: int


@pytest.fixture
def settings(inprocess_settings: Settings) -> Settings:
    return inprocess_settings


async def double(request: Ping) -> Pong:
    if request.n < 0:
        raise EnclaveError(400, "negative", "invalid_value", "n")
    if request.n == 13:
        raise RuntimeError("unlucky")
    return Pong(n=2 * request.n)


PEER = Peer("the doubler", "doubler_unavailable", 0.5)


async def test_ask_maps_every_failure_the_same_way(nc: NatsClient, settings: Settings) -> None:
    bus = Bus(nc, settings)
    subject = settings.subjects._s("double")
    with pytest.raises(EnclaveError) as nobody:
        await bus.ask(PEER, subject, Ping(n=1), Pong)
    assert nobody.value.info.status == 503 and nobody.value.info.code == "doubler_unavailable"

    await serve(nc, subject, Ping, double, queue="doubler")
    assert (await bus.ask(PEER, subject, Ping(n=21), Pong)).n == 42
    with pytest.raises(EnclaveError) as refused:
        await bus.ask(PEER, subject, Ping(n=-1), Pong)
    assert refused.value.info.status == 400 and refused.value.info.param == "n"
    with pytest.raises(EnclaveError) as broken:
        await bus.ask(PEER, subject, Ping(n=13), Pong)
    assert broken.value.info.status == 500
    with pytest.raises(EnclaveError) as unreadable:
        await bus.ask(PEER, subject, b'{"n": "x"}', Pong)
    assert unreadable.value.info.status == 400
    # `failed` turns the same errors into a reply.
    got = await bus.ask(PEER, subject, Ping(n=-1), Pong, failed=lambda e: Pong(n=e.status))
    assert got.n == 400

    silent = settings.subjects._s("silent")

    async def never_answers(msg: Msg) -> None:
        pass

    await nc.subscribe(silent, cb=never_answers)
    with pytest.raises(EnclaveError) as slow:
        await bus.ask(PEER, silent, Ping(n=1), Pong)
    assert slow.value.info.status == 504 and slow.value.info.code == "upstream_timeout"


async def test_an_unexpected_failure_to_ask_is_503_and_says_which(
    services: Infra, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure that is neither "nobody listens" nor a timeout (here: the connection was
    closed) is the peer's 503 like them, and the log says what it was, once per interval."""
    closed = await nats.connect(services.nats_url)
    await closed.close()
    bus = Bus(closed, settings)
    subject = settings.subjects._s("double")
    peer = Peer("the doubler", "closed_doubler_unavailable", 5.0)  # logged by this test only
    with caplog.at_level("WARNING", logger="enclave.bus"):
        for _ in range(3):
            with pytest.raises(EnclaveError) as gone:
                await bus.ask(peer, subject, Ping(n=1), Pong)
            assert gone.value.info.status == 503
            assert gone.value.info.code == "closed_doubler_unavailable"
    said = [r.getMessage() for r in caplog.records if "ConnectionClosedError" in r.getMessage()]
    assert len(said) == 1 and subject in said[0]


HEDGED = Peer("the doubler", "doubler_unavailable", 10.0, hedge_s=0.3)


async def test_a_hedged_ask_outlives_the_replica_that_died_with_it(
    nc: NatsClient, settings: Settings
) -> None:
    """The replica that took the request dies without answering (as `kill -9` leaves it):
    the asker hears it in about two hedges, not the 10 s timeout; a replica that still
    lives answers the second request; a slow one is still heard (whichever answers first);
    a peer that answers nothing at all still times out."""
    bus = Bus(nc, settings)
    subject = settings.subjects._s("hedged")
    taken: list[int] = []

    async def dies(msg: Msg) -> None:
        taken.append(Ping.model_validate_json(msg.data).n)
        await sub.unsubscribe()  # gone, with the request in hand

    sub = await nc.subscribe(subject, queue="doubler", cb=dies)
    started = asyncio.get_running_loop().time()
    with pytest.raises(EnclaveError) as gone:
        await bus.ask(HEDGED, subject, Ping(n=1), Pong)
    took = asyncio.get_running_loop().time() - started
    assert gone.value.info.status == 503 and taken == [1]
    assert took < 2.0, took

    # The one that took it dies; another replica is there: it answers the second request.
    sub = await nc.subscribe(subject, queue="doubler", cb=dies)
    await settled(nc)
    answered = asyncio.Event()

    async def lives(msg: Msg) -> None:
        answered.set()
        await msg.respond(
            Pong(n=2 * Ping.model_validate_json(msg.data).n).model_dump_json().encode()
        )

    # Only once `dies` took the first request does the live one listen.
    taken.clear()
    asking = asyncio.ensure_future(bus.ask(HEDGED, subject, Ping(n=5), Pong))
    while not taken:
        await asyncio.sleep(0.01)
    await nc.subscribe(subject, queue="doubler", cb=lives)
    assert (await asking).n == 10 and answered.is_set()

    # A slow replica (longer than the hedge) is heard: two asks, the first answer wins.
    slow_subject = settings.subjects._s("hedged-slow")
    asked: list[int] = []

    async def slow(msg: Msg) -> None:
        asked.append(1)
        await asyncio.sleep(0.5)
        await msg.respond(Pong(n=len(asked)).model_dump_json().encode())

    await nc.subscribe(slow_subject, queue="doubler", cb=slow)
    assert (await bus.ask(HEDGED, slow_subject, Ping(n=1), Pong)).n == 1  # the first's
    await asyncio.sleep(0.2)
    assert len(asked) == 2  # asked again after the hedge

    silent = settings.subjects._s("hedged-silent")

    async def never_answers(msg: Msg) -> None:
        pass

    await nc.subscribe(silent, cb=never_answers)
    quick = Peer("the doubler", "doubler_unavailable", 1.0, hedge_s=0.3)
    with pytest.raises(EnclaveError) as slow_peer:
        await bus.ask(quick, silent, Ping(n=1), Pong)
    assert slow_peer.value.info.status == 504


# Not idempotent, long: watched (pinged every second while it runs), never asked twice.
WATCHED = Peer("the runner", "runner_unavailable", 30.0, alive_s=1.0)


async def test_a_watched_ask_hears_at_once_that_its_replica_died(
    services: Infra, nc: NatsClient, settings: Settings
) -> None:
    """The replica that took the request says so, then dies with it in hand (its
    connection gone, as `kill -9` leaves it): the asker gets 503 `runner_lost` within
    about a second, not the 30 s timeout, and the request was taken once."""
    bus = Bus(nc, settings)
    subject = settings.subjects._s("watched")
    replica = await nats.connect(services.nats_url)
    taken: list[int] = []

    async def runs_forever(request: Ping) -> Pong:
        taken.append(request.n)
        await asyncio.sleep(3600)
        return Pong(n=0)

    alive = settings.subjects._s("watched.alive.r1")
    await serve_alive(replica, alive)
    await serve(
        replica, subject, Ping, runs_forever, queue="runner", concurrent=True, accepted=alive
    )
    await settled(replica)
    asking = asyncio.ensure_future(bus.ask(WATCHED, subject, Ping(n=1), Pong))
    while not taken:
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.5)  # pinged and alive for a while
    assert not asking.done()
    await replica.close()
    died = asyncio.get_running_loop().time()
    with pytest.raises(EnclaveError) as lost:
        await asking
    took = asyncio.get_running_loop().time() - died
    assert (lost.value.info.status, lost.value.info.code) == (503, "runner_lost"), lost.value
    assert took < 3.0, took
    assert taken == [1]
    # Nobody listens at all: 503 unavailable at once, as for any peer.
    started = asyncio.get_running_loop().time()
    with pytest.raises(EnclaveError) as nobody:
        await bus.ask(WATCHED, subject, Ping(n=2), Pong)
    assert nobody.value.info.code == "runner_unavailable"
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_a_watched_ask_waits_for_a_live_replica_past_its_pings(
    nc: NatsClient, settings: Settings
) -> None:
    """A run of 5 s (five pings' worth) is answered, once; a refusal comes back as such."""
    bus = Bus(nc, settings)
    subject = settings.subjects._s("watched-live")
    alive = settings.subjects._s("watched-live.alive.r1")
    runs: list[int] = []

    async def slow_double(request: Ping) -> Pong:
        runs.append(request.n)
        reply = await double(request)  # a refusal at once
        await asyncio.sleep(5.0)
        return reply

    await serve_alive(nc, alive)
    await serve(nc, subject, Ping, slow_double, queue="runner", concurrent=True, accepted=alive)
    assert (await bus.ask(WATCHED, subject, Ping(n=21), Pong)).n == 42
    assert runs == [21]
    with pytest.raises(EnclaveError) as refused:
        await bus.ask(WATCHED, subject, Ping(n=-1), Pong)
    assert refused.value.info.status == 400


async def test_the_same_handler_on_faststream(nc: NatsClient, settings: Settings) -> None:
    subject = settings.subjects._s("double")
    broker = NatsBroker(settings.nats_url)
    serve_broker(broker, subject, Ping, double, queue="doubler")
    await broker.start()
    await settled(broker.connection)  # the SUB reaches the server before the first ask
    try:
        bus = Bus(nc, settings)
        assert (await bus.ask(PEER, subject, Ping(n=4), Pong)).n == 8
        with pytest.raises(EnclaveError) as refused:
            await bus.ask(PEER, subject, Ping(n=-1), Pong)
        assert refused.value.info.status == 400 and refused.value.info.code == "invalid_value"
    finally:
        await broker.stop()


async def test_concurrent_handlers_do_not_wait_for_each_other(
    nc: NatsClient, settings: Settings
) -> None:
    subject = settings.subjects._s("slow")
    release = asyncio.Event()

    async def slow(request: Ping) -> Pong:
        if request.n == 0:
            await release.wait()
        return Pong(n=request.n)

    await serve(nc, subject, Ping, slow, queue="slow", concurrent=True)
    bus = Bus(nc, settings)
    held = asyncio.ensure_future(bus.ask(PEER, subject, Ping(n=0), Pong))
    assert (await bus.ask(PEER, subject, Ping(n=7), Pong)).n == 7
    release.set()
    assert (await held).n == 0


async def test_replies_are_routed_by_key(nc: NatsClient, settings: Settings) -> None:
    router = await ReplyRouter(nc, settings.subjects.chat_stream("gw1", "")).start()
    a, b = router.open("a"), router.open("b")
    await nc.publish(b.subject, b"to b")
    await nc.publish(a.subject, b"to a 1")
    await nc.publish(a.subject, b"to a 2")
    await nc.publish(settings.subjects.chat_stream("gw1", "gone"), b"nobody waits")
    first = await a.next(1.0)
    assert first is not None and first.data == b"to a 1"
    await asyncio.sleep(0.05)
    assert [m.data for m in a.ready()] == [b"to a 2"]
    got = await b.next(1.0)
    assert got is not None and got.data == b"to b"
    assert await b.next(0.05) is None
    a.close()
    b.close()
    assert router.inboxes == {}


async def test_a_cancel_as_a_message_lands_still_stops_its_reader(
    nc: NatsClient, settings: Settings
) -> None:
    """Python 3.11's `asyncio.wait_for` lost such a cancel: the reader got the message and
    read on, and a turn whose client had left streamed on for nobody."""
    router = ReplyRouter(nc, settings.subjects.chat_stream("gw1", ""))
    inbox = router.open("k")
    reading = asyncio.ensure_future(inbox.next(5.0))
    await asyncio.sleep(0)  # it waits
    inbox._queue.put_nowait(Msg(nc, subject=inbox.subject, data=b"tok"))  # as routed
    reading.cancel()  # as the message lands: the reader's wake-up is due
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert [m.data for m in inbox.ready()] == [b"tok"]  # and the message is not lost


async def test_a_member_that_leaves_and_joins_again_loses_no_request(
    services: Infra, settings: Settings
) -> None:
    """A worker leaves its pool's queue group whenever it is full and joins again when a
    slot frees: under 16 askers, 300 leaves lose no request (each is answered, by one
    member or the other). With nats-py's own `drain()` in place of `leave`, 5 runs of 5
    lost requests here, each asker waiting out its whole timeout."""
    subject = settings.subjects._s("churn")
    staying, churning, asking = [await nats.connect(services.nats_url) for _ in range(3)]
    served = {"staying": 0, "churning": 0}

    def member(name: str) -> Callable[[Ping], Awaitable[Pong]]:
        async def handle(request: Ping) -> Pong:
            served[name] += 1
            return Pong(n=request.n)

        return handle

    try:
        await serve(staying, subject, Ping, member("staying"), queue="churn")
        # The staying member is in the group before the first ask: without this, under a
        # loaded CI the askers' first round could reach the server before its SUB did, and
        # all 16 heard "no responders" (seen once, 2026-12-02).
        await settled(staying)
        leaves = 0

        async def churn() -> None:
            nonlocal leaves
            for _ in range(300):
                sub = await serve(churning, subject, Ping, member("churning"), queue="churn")
                await asyncio.sleep(0.001)
                await leave(churning, sub)
                leaves += 1

        bus, peer = Bus(asking, settings), Peer("a member", "member_unavailable", 2.0)
        lost: list[EnclaveError] = []

        async def ask_until(done: asyncio.Task[None]) -> None:
            n = 0
            while not done.done():
                n += 1
                try:
                    assert (await bus.ask(peer, subject, Ping(n=n), Pong)).n == n
                except EnclaveError as exc:
                    lost.append(exc)

        churning_task = asyncio.ensure_future(churn())
        await asyncio.gather(*(ask_until(churning_task) for _ in range(16)), churning_task)
        assert leaves == 300
        assert lost == [], [e.info.message for e in lost]
        assert served["churning"] > 0 and served["staying"] > 0, served
    finally:
        for client in (staying, churning, asking):
            await client.close()


async def test_the_server_has_read_a_sub_or_unsub_when_settled_or_leave_returns() -> None:
    """What `settled` and `leave` promise, read off the wire: a stand-in server records
    what a real nats-py client sends, and what it had read when it answered the PING
    that ended the call. nats-py's own `flush()` and `drain()` are asserted too: their
    PING overtakes the SUB or UNSUB (so that this test says when a nats-py release
    changes that, and the workaround can go)."""
    read: list[bytes] = []
    read_at_ping: list[list[bytes]] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b'INFO {"server_id":"rec","version":"2.10.0","proto":1,"headers":true,'
            b'"max_payload":1048576}\r\n'
        )
        while line := await reader.readline():
            read.append(line.split()[0])
            if line.startswith(b"PING"):
                read_at_ping.append(list(read))
                writer.write(b"PONG\r\n")
                await writer.drain()

    async def ignore(_msg: Msg) -> None:
        return None

    recorder = await asyncio.start_server(server, "127.0.0.1", 0)
    port = recorder.sockets[0].getsockname()[1]
    client = await nats.connect(f"nats://127.0.0.1:{port}", ping_interval=3600)

    async def read_by_the_end(call: Callable[[], Awaitable[object]]) -> list[bytes]:
        """The commands the server had read, of those sent since `call` began, when it
        answered the first PING that `call` sent (the round trip that is to prove them
        read; `leave` makes another, `drain()`'s own)."""
        start, pings = len(read), len(read_at_ping)
        await call()
        return read_at_ping[pings][start:]

    try:
        subs: list[Subscription] = []

        async def subscribe() -> None:
            subs.append(await client.subscribe("s", queue="q", cb=ignore))

        async def subscribe_flush() -> None:
            await subscribe()
            await client.flush()

        async def subscribe_settled() -> None:
            await subscribe()
            await settled(client)

        assert b"SUB" in await read_by_the_end(subscribe_settled)
        assert b"UNSUB" in await read_by_the_end(lambda: leave(client, subs[-1]))
        assert b"SUB" not in await read_by_the_end(subscribe_flush)
        assert b"UNSUB" not in await read_by_the_end(subs[-1].drain)
    finally:
        await client.close()
        recorder.close()


async def test_a_cancel_that_nats_py_swallows_in_settled_still_ends_it(
    nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py's forced flush catches a CancelledError and returns (`except
    asyncio.CancelledError: pass`); `settled` raises it again, so a stop's time bound
    (here 50 ms) still holds. The stand-in blocks the way a slow socket would."""

    async def swallowing(force_flush: bool = False) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)

    monkeypatch.setattr(nc, "_flush_pending", swallowing)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await settled(nc)


async def fake_pool(nc: NatsClient, settings: Settings, pool: str, words: list[str]) -> list[str]:
    """A worker of `pool` that accepts and streams `words`, one event each; returns the
    routes it was asked for."""
    routed: list[str] = []

    async def route(request: ev.RouteRequest) -> ev.RouteReply:
        routed.append(request.model)
        if request.model == "missing":
            raise EnclaveError(404, "no such model", "model_not_found", "model")
        return ev.RouteReply(pool=pool, timeout_s=5.0)

    async def generate(request: ev.GenerateRequest) -> ev.GenerateAccepted:
        async def stream() -> None:
            for i, word in enumerate(words):
                event = ev.TurnEvent(deltas=[ev.Delta(content=word)], done=i == len(words) - 1)
                await nc.publish(
                    request.deltas_subject,
                    event.model_dump_json().encode(),
                    headers={WORKER_HEADER: "w1"},
                )

        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(stream()))
        return ev.GenerateAccepted(accepted=True, worker="w1", timeout_s=request.timeout_s)

    await serve(nc, settings.subjects.inference_route, ev.RouteRequest, route, queue="r")
    await serve(
        nc, settings.subjects.inference_worker(pool), ev.GenerateRequest, generate, queue=pool
    )
    await settled(nc)
    return routed


async def test_generation_client_routes_once_and_collects_the_answer(
    nc: NatsClient, settings: Settings
) -> None:
    routed = await fake_pool(nc, settings, "p1", ["Hello", ", ", "world"])
    deltas = await ReplyRouter(nc, settings.subjects.inference_deltas("mem1", "")).start()
    client = GenerationClient(Bus(nc, settings), deltas, RouteCache(60.0), 5.0)
    ctx = RequestContext(tenant="acme", request_id="r1")
    messages = [ev.ChatMessage(role="user", content="hi")]
    assert await client.complete(ctx, "m", messages, ev.GenerationParams()) == "Hello, world"
    assert await client.complete(ctx, "m", messages, ev.GenerationParams()) == "Hello, world"
    assert routed == ["m"]  # the second used the cached route
    assert deltas.inboxes == {}

    # An unknown model: the router's refusal ends the generation, and is not cached.
    with pytest.raises(GenerationFailed) as missing:
        await client.complete(ctx, "missing", messages, ev.GenerationParams())
    assert missing.value.info.status == 404
    with pytest.raises(GenerationFailed):
        await client.complete(ctx, "missing", messages, ev.GenerationParams())
    assert routed == ["m", "missing", "missing"]


async def test_a_pool_without_workers_is_503_and_drops_the_route(
    nc: NatsClient, settings: Settings
) -> None:
    deltas = await ReplyRouter(nc, settings.subjects.inference_deltas("rt1", "")).start()
    routes = RouteCache(60.0)
    routes.put("acme", "m", "chat", ev.RouteReply(pool="nobody"))
    client = GenerationClient(Bus(nc, settings), deltas, routes, 5.0)
    ctx = RequestContext(tenant="acme", request_id="r2")
    generation = client.start(ev.GenerateRequest(ctx=ctx, model="m"), ev.RouteReply(pool="nobody"))
    with pytest.raises(GenerationFailed) as failed:
        await generation.next()
    generation.close()
    assert failed.value.info.status == 503 and failed.value.info.code == "no_worker_available"
    assert routes.get("acme", "m", "chat") is None


async def test_services_starting_together_all_declare_the_streams(
    services: Infra, settings: Settings
) -> None:
    """Eight services declaring the same streams in the same instant (as `up` and a test
    platform start them) all start: a create that loses the race looks again and updates."""
    clients = [await nats.connect(services.nats_url) for _ in range(8)]
    try:
        await asyncio.gather(*(ensure_streams(c, settings) for c in clients))
        js = clients[0].jetstream()
        for config in stream_configs(settings):
            info = await js.stream_info(config.name or "")
            assert info.config.subjects == config.subjects
    finally:
        for config in stream_configs(settings):
            await clients[0].jetstream().delete_stream(config.name or "")
        for c in clients:
            await c.close()


def test_every_stream_is_kept_as_many_times_as_configured() -> None:
    """On the three-node cluster (ENCLAVE_STREAM_REPLICAS=3) every stream, fine-tuning
    jobs included, has three copies: a node lost loses no queued turn, memory, audit
    record, agent resume or training job."""
    configs = stream_configs(Settings(stream_replicas=3))
    assert {c.name: c.num_replicas for c in configs} == {c.name: 3 for c in configs}
    assert len(configs) == 5


async def test_a_models_changed_broadcast_ends_cached_adapter_routes(
    nc: NatsClient, settings: Settings
) -> None:
    """The runtime's and memory's generation client hear `models.changed` on the real bus:
    the promoted alias is asked of the router again at once, not after route_cache_s."""
    deltas = await ReplyRouter(nc, settings.subjects.inference_deltas("rt2", "")).start()
    routes = RouteCache(3600.0)
    client = GenerationClient(Bus(nc, settings), deltas, routes, 5.0)
    await client.follow_models_changed()
    alias = "acme/smollm2-135m-instruct:ft"
    routes.put("acme", alias, "chat", ev.RouteReply(pool="lora", adapter=alias + "@old"))
    routes.put("acme", "smollm2-135m-instruct", "chat", ev.RouteReply(pool="smollm2"))
    publisher = await nats.connect(settings.nats_url)
    try:
        event = ev.ModelsChanged(
            kind="promoted",
            tenant="acme",
            base_model="smollm2-135m-instruct",
            public_id=alias,
            digest="sha256:" + "2" * 64,
        )
        await publisher.publish(settings.subjects.models_changed, event.model_dump_json().encode())
        await settled(publisher)
        for _ in range(100):
            if routes.get("acme", alias, "chat") is None:
                break
            await asyncio.sleep(0.02)
        assert routes.get("acme", alias, "chat") is None
        assert routes.get("acme", "smollm2-135m-instruct", "chat") is not None
    finally:
        await publisher.close()
