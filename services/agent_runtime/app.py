"""agent_runtime wiring: consumes chat.requested from the JetStream work queue, runs turns.

All replicas share one durable consumer through a deliver group, so each turn runs on
exactly one replica; a message is acked only when its turn is done, so a replica that
dies mid-turn leaves it to be redelivered to another.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from faststream import FastStream
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from libs.bus import ensure_streams, event_bytes, jstream, make_broker, stream_configs
from libs.errors import ErrorInfo
from libs.events import (
    ChatRequested,
    GenerateAccepted,
    GenerateRequest,
    MemoryStoreRequested,
    RetrieveReply,
    RetrieveRequest,
)
from libs.settings import Settings
from services.agent_runtime.pipeline import DeltaSource, run_turn

ROUTER_TIMEOUT_S = 10.0


class NatsDeltaSource:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.sub = None

    async def on_msg(self, msg: Msg) -> None:
        self.queue.put_nowait(msg.data)

    async def next(self, timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


class NatsTurnPorts:
    def __init__(self, settings: Settings, nc: NatsClient) -> None:
        self.nc = nc
        self.subjects = settings.subjects
        self.memory_timeout_s = settings.memory_timeout_s

    async def open_deltas(self, subject: str) -> DeltaSource:
        source = NatsDeltaSource()
        source.sub = await self.nc.subscribe(subject, cb=source.on_msg)
        return source

    async def request_generation(self, request: GenerateRequest) -> GenerateAccepted:
        try:
            msg = await self.nc.request(
                self.subjects.inference_generate,
                event_bytes(request),
                timeout=ROUTER_TIMEOUT_S,
                headers=request.ctx.headers(),
            )
        except Exception:
            return GenerateAccepted(
                accepted=False,
                error=ErrorInfo(status=503, message="The inference router is not available."),
            )
        return GenerateAccepted.model_validate_json(msg.data)

    async def emit_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        await self.nc.publish(subject, data, headers=headers)

    async def retrieve_context(self, request: RetrieveRequest) -> RetrieveReply:
        try:
            msg = await self.nc.request(
                self.subjects.memory_retrieve,
                event_bytes(request),
                timeout=self.memory_timeout_s,
                headers=request.ctx.headers(),
            )
        except Exception:
            return RetrieveReply(
                error=ErrorInfo(status=503, message="The memory service is not available.")
            )
        return RetrieveReply.model_validate_json(msg.data)

    async def store_memory(self, event: MemoryStoreRequested) -> None:
        # JetStream: the turn is remembered even if the memory service is down right now.
        try:
            await self.nc.jetstream().publish(
                self.subjects.memory_store, event_bytes(event), headers=event.ctx.headers()
            )
        except Exception:  # the answer is delivered; a lost memory must not redo the turn
            logging.getLogger("enclave.runtime").warning("memory.store publish failed")


def build_app(settings: Settings) -> FastStream:
    broker = make_broker(settings, "agent_runtime")
    runtime_id = f"{socket.gethostname()}-{os.getpid()}"
    chat = stream_configs(settings)[0]

    @broker.subscriber(
        settings.subjects.chat_requested,
        stream=jstream(chat),
        durable="agent_runtime",
        queue="agent_runtime",
        max_workers=settings.runtime_concurrency,
        config=ConsumerConfig(ack_wait=300, max_ack_pending=10_000),
    )
    async def on_chat_requested(event: ChatRequested) -> None:
        await run_turn(
            event,
            NatsTurnPorts(settings, broker.connection),
            settings.subjects,
            settings.upstream_timeout_s,
            runtime_id,
        )

    app = FastStream(broker)

    @app.on_startup
    async def _streams() -> None:
        # The consumer is created when the broker starts: its stream must exist first.
        await broker.connect()
        await ensure_streams(broker.connection, settings)

    return app
