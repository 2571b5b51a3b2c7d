"""The gateway's side of a turn: publish chat.requested, read the turn's events back.

Each gateway replica reads the events of all its turns on one wildcard subscription,
chat.stream.<replica>.*, registered before any turn is published, so no event can be
missed and no turn costs a SUB and UNSUB. It publishes through JetStream with an ack, so
an accepted request is never lost.
"""

from __future__ import annotations

import asyncio
import os
import secrets

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from libs.bus import event_bytes
from libs.context import RUNTIME_HEADER, WORKER_HEADER
from libs.errors import EnclaveError, upstream_timeout
from libs.events import ChatRequested, TurnEvent
from libs.subjects import Subjects

PUBLISH_TIMEOUT_S = 5.0


class TurnStream:
    def __init__(self, client: TurnClient, key: str) -> None:
        self.client = client
        self.key = key
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        # Which runtime replica and worker serve the turn (relayed message headers).
        self.served_by: dict[str, str] = {}

    def _on_msg(self, msg: Msg) -> None:
        if not self.served_by and msg.headers and RUNTIME_HEADER in msg.headers:
            self.served_by = {
                "runtime": msg.headers[RUNTIME_HEADER],
                "worker": msg.headers.get(WORKER_HEADER, ""),
            }
        self.queue.put_nowait(msg.data)

    async def next_batch(self) -> list[TurnEvent]:
        """Every event that has arrived, waiting for at least one."""
        timeout = self.client.timeout_s
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise EnclaveError.of(upstream_timeout(f"no answer in {timeout}s")) from None
        batch = [TurnEvent.model_validate_json(first)]
        while not self.queue.empty():
            batch.append(TurnEvent.model_validate_json(self.queue.get_nowait()))
        return batch

    async def close(self) -> None:
        self.client.turns.pop(self.key, None)


class TurnClient:
    def __init__(self, nc: NatsClient, subjects: Subjects, timeout_s: float) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.subjects = subjects
        self.timeout_s = timeout_s
        self.replica = f"gw{os.getpid()}{secrets.token_hex(3)}"
        self.turns: dict[str, TurnStream] = {}
        self._prefix_len = len(subjects.chat_stream(self.replica, ""))

    async def subscribe(self) -> None:
        await self.nc.subscribe(self.subjects.chat_streams_of(self.replica), cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        turn = self.turns.get(msg.subject[self._prefix_len :])
        if turn is not None:
            turn._on_msg(msg)

    async def start(self, event: ChatRequested) -> TurnStream:
        key = event.ctx.request_id
        stream = TurnStream(self, key)
        self.turns[key] = stream
        event.reply_subject = self.subjects.chat_stream(self.replica, key)
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
