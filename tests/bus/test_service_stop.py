"""A replica that stops while it is asked loses no request: it leaves its queue groups
first and answers what was already routed to it (libs.rpc.stop_taking_requests), on both
transports, while the replica that stays answers the rest. On a real NATS."""

from __future__ import annotations

import asyncio

from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel

from libs.errors import EnclaveError
from libs.rpc import Bus, Peer, serve, serve_broker
from libs.service import Build, Service, running
from libs.settings import Settings


class Ask(BaseModel):
    n: int


class Answer(BaseModel):
    n: int
    replica: str


class Replica:
    """A service of two handlers, one per transport, each taking 5 ms a request; its
    `stop()` takes 0.3 s (work of its own to finish)."""

    def __init__(self, bus: Bus, broker: NatsBroker, name: str) -> None:
        self.bus, self.name = bus, name
        self.stopped = False
        subjects = bus.subjects
        serve_broker(broker, subjects._s("stop.broker"), Ask, self.handle, queue="stop")

    async def handle(self, request: Ask) -> Answer:
        await asyncio.sleep(0.005)
        return Answer(n=request.n, replica=self.name)

    async def start(self) -> None:
        await serve(self.bus.nc, self.bus.subjects._s("stop.raw"), Ask, self.handle, queue="stop")

    async def stop(self) -> None:
        await asyncio.sleep(0.3)
        self.stopped = True


async def test_a_stopping_replica_answers_what_it_was_handed_and_takes_nothing_new(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    settings = inprocess_settings

    def build(name: str) -> Build:
        async def make(bus: Bus, broker: NatsBroker) -> Service:
            return Replica(bus, broker, name)

        return make

    bus = Bus(nc, settings)
    peer = Peer("a replica", "replica_unavailable", 3.0)
    answers: dict[str, int] = {"staying": 0, "stopping": 0}
    after_stop: list[str] = []
    failures: list[str] = []
    done = asyncio.Event()
    stopped = asyncio.Event()

    async def asker() -> None:
        n = 0
        while not done.is_set():
            n += 1
            subject = settings.subjects._s("stop.raw" if n % 2 else "stop.broker")
            sent_after_stop = stopped.is_set()
            try:
                answer = await bus.ask(peer, subject, Ask(n=n), Answer)
            except EnclaveError as exc:
                failures.append(f"{subject}: {exc.info.message}")
                continue
            assert answer.n == n
            answers[answer.replica] += 1
            if sent_after_stop:
                after_stop.append(answer.replica)

    async with running(settings, "stopper", build("staying")):
        stopping = running(settings, "stopper", build("stopping"))
        replica = await stopping.__aenter__()
        askers = [asyncio.ensure_future(asker()) for _ in range(16)]
        await asyncio.sleep(0.5)
        assert answers["stopping"] > 0, answers  # it was taking its share
        await stopping.__aexit__(None, None, None)
        assert isinstance(replica, Replica) and replica.stopped
        stopped.set()
        await asyncio.sleep(0.3)
        done.set()
        await asyncio.gather(*askers)
    assert failures == [], failures[:5]
    assert after_stop and set(after_stop) == {"staying"}, set(after_stop)
