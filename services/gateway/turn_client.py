"""The gateway's side of a turn: publish chat.requested, read the turn's events back.

It subscribes to the per-request subject before publishing, so no event can be missed,
and publishes through JetStream with an ack, so an accepted request is never lost.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from libs.bus import event_bytes
from libs.errors import EnclaveError, upstream_timeout
from libs.events import ChatRequested, TurnEvent
from libs.subjects import Subjects

PUBLISH_TIMEOUT_S = 5.0


class TurnStream:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.sub: object | None = None

    async def _on_msg(self, msg: Msg) -> None:
        self.queue.put_nowait(msg.data)

    async def next_batch(self) -> list[TurnEvent]:
        """Every event that has arrived, waiting for at least one."""
        try:
            first = await asyncio.wait_for(self.queue.get(), self.timeout_s)
        except TimeoutError:
            raise EnclaveError.of(upstream_timeout(f"no answer in {self.timeout_s}s")) from None
        batch = [TurnEvent.model_validate_json(first)]
        while not self.queue.empty():
            batch.append(TurnEvent.model_validate_json(self.queue.get_nowait()))
        return batch

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()  # type: ignore[attr-defined]
            self.sub = None


class TurnClient:
    def __init__(self, nc: NatsClient, subjects: Subjects, timeout_s: float) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.subjects = subjects
        self.timeout_s = timeout_s

    async def start(self, event: ChatRequested) -> TurnStream:
        stream = TurnStream(self.timeout_s)
        stream.sub = await self.nc.subscribe(
            self.subjects.chat_stream(event.ctx.request_id), cb=stream._on_msg
        )
        try:
            await self.js.publish(
                self.subjects.chat_requested,
                event_bytes(event),
                headers=event.ctx.headers(),
                timeout=PUBLISH_TIMEOUT_S,
            )
        except Exception:
            await stream.close()
            raise EnclaveError(
                503, "The request queue is not available; try again later.", "bus_unavailable"
            ) from None
        return stream
