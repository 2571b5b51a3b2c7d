"""The gateway's side of a turn: publish chat.requested, read the turn's events back.

Each gateway replica reads the events of all its turns through one `ReplyRouter`
(libs/rpc.py) on chat.stream.<replica>.*, subscribed before any turn is published, so no
event can be missed and no turn costs a SUB and UNSUB. It publishes through JetStream
with an ack, so an accepted request is never lost.
"""

from __future__ import annotations

import os
import secrets

from nats.aio.client import Client as NatsClient

from libs.bus import event_bytes
from libs.context import RUNTIME_HEADER, WORKER_HEADER
from libs.errors import EnclaveError, upstream_timeout
from libs.events import ChatRequested, TurnEvent
from libs.rpc import Inbox, ReplyRouter
from libs.subjects import Subjects

PUBLISH_TIMEOUT_S = 5.0


class TurnStream:
    def __init__(self, inbox: Inbox, timeout_s: float) -> None:
        self.inbox = inbox
        self.timeout_s = timeout_s
        # Which runtime replica and worker serve the turn (relayed message headers).
        self.served_by: dict[str, str] = {}

    async def next_batch(self) -> list[TurnEvent]:
        """Every event that has arrived, waiting for at least one."""
        first = await self.inbox.next(self.timeout_s)
        if first is None:
            raise EnclaveError.of(upstream_timeout(f"no answer in {self.timeout_s}s"))
        batch = []
        for msg in [first, *self.inbox.ready()]:
            if not self.served_by and msg.headers and RUNTIME_HEADER in msg.headers:
                self.served_by = {
                    "runtime": msg.headers[RUNTIME_HEADER],
                    "worker": msg.headers.get(WORKER_HEADER, ""),
                }
            batch.append(TurnEvent.model_validate_json(msg.data))
        return batch

    async def close(self) -> None:
        self.inbox.close()


class TurnClient:
    def __init__(self, nc: NatsClient, subjects: Subjects, timeout_s: float) -> None:
        self.js = nc.jetstream()
        self.subjects = subjects
        self.timeout_s = timeout_s
        self.replica = f"gw{os.getpid()}{secrets.token_hex(3)}"
        self.router = ReplyRouter(nc, subjects.chat_stream(self.replica, ""))

    async def subscribe(self) -> None:
        """Before the first turn: no event of any turn can be missed."""
        await self.router.start()

    async def start(self, event: ChatRequested) -> TurnStream:
        inbox = self.router.open(event.ctx.request_id)
        event.reply_subject = inbox.subject
        try:
            await self.js.publish(
                self.subjects.chat_requested,
                event_bytes(event),
                headers=event.ctx.headers(),
                timeout=PUBLISH_TIMEOUT_S,
            )
        except Exception:
            inbox.close()
            raise EnclaveError(
                503, "The request queue is not available; try again later.", "bus_unavailable"
            ) from None
        return TurnStream(inbox, self.timeout_s)
