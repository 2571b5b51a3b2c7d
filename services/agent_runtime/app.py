"""agent_runtime wiring: consumes chat.requested from the JetStream work queue, runs turns.

All replicas share one durable consumer through a deliver group, so each turn runs on
exactly one replica; a message is acked only when its turn is done, so a replica that
dies mid-turn leaves it to be redelivered to another.
"""

from __future__ import annotations

import asyncio
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
    GuardrailCheck,
    GuardrailVerdict,
)
from libs.settings import Settings
from services.agent_runtime.pipeline import DeltaSource, run_turn

ROUTER_TIMEOUT_S = 10.0
GUARDRAILS_TIMEOUT_S = 10.0


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

    async def guard(self, subject: str, check: GuardrailCheck) -> GuardrailVerdict:
        try:
            msg = await self.nc.request(
                subject,
                event_bytes(check),
                timeout=GUARDRAILS_TIMEOUT_S,
                headers=check.ctx.headers(),
            )
        except Exception:
            # Fail closed: without a verdict nothing goes to a model or to the client.
            return GuardrailVerdict(
                allowed=False,
                error=ErrorInfo(
                    status=503,
                    message="The guardrails service is not available; try again later.",
                    code="guardrails_unavailable",
                ),
            )
        return GuardrailVerdict.model_validate_json(msg.data)


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
