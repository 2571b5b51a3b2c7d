"""Running a service: connect, build everything, serve, stop. The same for every service.

A service's `bootstrap.py` has one `build(bus, broker)` that constructs everything the
service needs (nothing is filled in later) and returns a `Service`; its `app.py` hands that
to `ServiceApp`, which `enclave serve` runs until SIGINT/SIGTERM. A test starts the same
service in its own process with `running(settings, name, build)`. A service serves once
the server has read its subscriptions; it stops by leaving its queue groups and answering
what was already routed to it, then running its own `stop()` (libs.rpc).

FastStream's broker carries the subscribers that are off the hot path (`rpc.serve_broker`,
JetStream consumers); the raw nats-py connection underneath it carries the rest
(`rpc.serve`, `rpc.ReplyRouter`), so a service holds one connection to NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from faststream.nats import NatsBroker

from libs.bus import ensure_streams, make_broker
from libs.rpc import Bus, settled, stop_taking_requests
from libs.settings import Settings


class Service(Protocol):
    async def start(self) -> None:
        """Subscribe: from here on the service serves."""
        ...

    async def stop(self) -> None:
        """Stop taking work and finish what is running."""
        ...


Build = Callable[[Bus, NatsBroker], Awaitable[Service]]

# How long a stopping service's subscriptions may take to answer what was routed to them
# before it left its queue groups: each such request is short (work it started, a turn or
# a generation, is its own `stop()`'s to finish), and `enclave up` SIGKILLs a stage 6 s
# after SIGTERM (services/supervisor.py).
STOP_ANSWERING_S = 2.0


@contextlib.asynccontextmanager
async def running(settings: Settings, name: str, build: Build) -> AsyncIterator[Service]:
    """The service `build` makes, connected and serving until the block ends."""
    broker = make_broker(settings, name)
    await broker.connect()
    nc = broker.connection
    await ensure_streams(nc, settings)
    service = await build(Bus(nc, settings), broker)
    await broker.start()
    await service.start()
    # The server has every subscription before anyone is told the service serves: a
    # SUB still in the client's buffer would answer the first ask with no responders
    # (`settled`: nats-py's own flush() can return before the server has read it).
    await settled(nc)
    try:
        yield service
    finally:
        try:
            await stop_taking_requests(nc, STOP_ANSWERING_S)
            await service.stop()
        finally:
            await broker.stop()


class ServiceApp:
    """What `enclave serve <name>` runs: the service until SIGINT or SIGTERM."""

    def __init__(self, settings: Settings, name: str, build: Build) -> None:
        self.settings = settings
        self.name = name
        self.build = build
        # Set once the service is built and started (it serves): what /readyz waits for
        # (libs/metrics.py), read from the metrics server's thread.
        self.started = threading.Event()

    async def run(self) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        async with running(self.settings, self.name, self.build):
            self.started.set()
            await stopping.wait()
        self.started.clear()
