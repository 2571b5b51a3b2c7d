"""The gateway's side of a turn: publish chat.requested, read the turn's events back.

Each gateway replica reads the events of all its turns through one `ReplyRouter`
(libs/rpc.py) on chat.stream.<replica>.*, subscribed before any turn is published, so no
event can be missed and no turn costs a SUB and UNSUB. It publishes through JetStream
with an ack, so an accepted request is never lost.

Every stream ends: the runtime that takes a turn says so at once and then every
`heartbeat_s`. Silence for `stream_idle_s` after that means it died: a turn that gave its
client no token yet is published again (a new attempt, on its own subject, so nothing the
old one might still send is read), up to `turn_retries` times; otherwise the stream ends
with a `runtime_lost` error. No event for `gateway_timeout_s` is a 504. A turn closed
before its end (the client went away, a timeout, a lost runtime) is cancelled:
`chat.cancel` stops it on its runtime, which cancels its generation on the worker.
"""

from __future__ import annotations

import logging
import os
import secrets
import time

from libs.bus import event_bytes
from libs.context import RUNTIME_HEADER, WORKER_HEADER
from libs.errors import EnclaveError, stage_lost, upstream_timeout
from libs.events import ChatRequested, TurnCancelled, TurnEvent
from libs.rpc import Bus, Inbox, ReplyRouter

PUBLISH_TIMEOUT_S = 5.0
log = logging.getLogger("enclave.gateway")


class TurnStream:
    def __init__(self, client: TurnClient, event: ChatRequested, inbox: Inbox) -> None:
        self.client = client
        self.event = event
        self.inbox = inbox
        self.timeout_s = client.timeout_s
        self.retries = client.retries
        # Which runtime replica and worker serve the turn (relayed message headers).
        self.served_by: dict[str, str] = {}
        self.taken = False  # a runtime holds the turn: its silence now means it died
        self.tokens = False  # a delta came: the turn can no longer start again
        self.ended = False  # its last event came
        self.why = "client_disconnected"  # what a cancel on close says
        now = time.monotonic()
        self.heard_at = now
        self.due_by = now + self.timeout_s

    async def next_batch(self) -> list[TurnEvent]:
        """Every event that has arrived, waiting for at least one. Raises `EnclaveError`:
        504 when none came in `gateway_timeout_s`, 503 `runtime_lost` when the runtime went
        silent and the turn could not start again."""
        idle_s = self.client.idle_s
        while True:
            now = time.monotonic()
            due = self.due_by - now
            silence = self.heard_at + idle_s - now if self.taken else due
            first = await self.inbox.next(max(0.0, min(due, silence)))
            if first is None:
                await self._silent(timed_out=due <= silence)
                continue
            self.taken = True
            self.heard_at = time.monotonic()
            batch = []
            for msg in [first, *self.inbox.ready()]:
                event = TurnEvent.model_validate_json(msg.data)
                if event.heartbeat:
                    continue
                if not self.served_by and msg.headers and RUNTIME_HEADER in msg.headers:
                    self.served_by = {
                        "runtime": msg.headers[RUNTIME_HEADER],
                        "worker": msg.headers.get(WORKER_HEADER, ""),
                    }
                self.tokens = self.tokens or bool(event.deltas)
                self.ended = self.ended or event.done or event.error is not None
                batch.append(event)
            if batch:
                self.due_by = self.heard_at + self.timeout_s
                return batch

    async def _silent(self, timed_out: bool) -> None:
        """Nothing came in time: start the turn again where that cannot repeat a token,
        else raise. `timed_out`: the wait ended at the turn's deadline, not at the runtime's
        silence limit (decided by the deadline that ended the wait, not by reading the clock
        after it: the loop's timers may fire a millisecond early)."""
        if timed_out:
            self.why = "timeout"
            raise EnclaveError.of(upstream_timeout(f"no answer in {self.timeout_s:g}s"))
        silent = f"silent for {self.client.idle_s:g}s"
        if self.tokens or self.retries <= 0:
            self.why = "runtime_lost"
            raise EnclaveError.of(stage_lost("runtime", silent))
        self.retries -= 1
        log.warning(
            "turn %s: its runtime went %s before any token; publishing it again",
            self.event.ctx.request_id,
            silent,
        )
        await self._cancel("runtime_lost")  # in case it is only slow
        self.inbox.close()
        self.event.attempt += 1
        self.inbox = self.client.router.open(f"{self.event.ctx.request_id}-{self.event.attempt}")
        self.taken = False
        await self.client.publish(self.event, self.inbox)
        now = time.monotonic()
        self.heard_at, self.due_by = now, now + self.timeout_s

    async def _cancel(self, reason: str) -> None:
        cancel = TurnCancelled(
            ctx=self.event.ctx,
            reply_subject=self.inbox.subject,
            reason=reason,
        )
        try:
            await self.client.bus.nc.publish(
                self.client.bus.subjects.chat_cancel,
                event_bytes(cancel),
                headers=self.event.ctx.headers(),
            )
        except Exception:  # the runtime's heartbeat finds the inbox closed all the same
            log.warning("chat.cancel for %s not sent", self.event.ctx.request_id)

    async def close(self) -> None:
        """Done with the turn; one that had not ended is stopped on its runtime."""
        self.inbox.close()
        if not self.ended:
            self.ended = True
            await self._cancel(self.why)


class TurnClient:
    def __init__(self, bus: Bus, timeout_s: float | None = None) -> None:
        settings = bus.settings
        self.bus = bus
        self.js = bus.nc.jetstream()
        self.timeout_s = settings.gateway_timeout_s if timeout_s is None else timeout_s
        self.idle_s = settings.stream_idle_s
        self.retries = settings.turn_retries
        self.replica = f"gw{os.getpid()}{secrets.token_hex(3)}"
        self.router = ReplyRouter(bus.nc, bus.subjects.chat_stream(self.replica, ""))

    async def start(self) -> None:
        await self.router.start()

    async def start_turn(self, event: ChatRequested) -> TurnStream:
        inbox = self.router.open(event.ctx.request_id)
        try:
            await self.publish(event, inbox)
        except EnclaveError:
            inbox.close()
            raise
        return TurnStream(self, event, inbox)

    async def publish(self, event: ChatRequested, inbox: Inbox) -> None:
        """The turn on the work queue, its events to `inbox`."""
        event.reply_subject = inbox.subject
        try:
            await self.js.publish(
                self.bus.subjects.chat_requested,
                event_bytes(event),
                headers=event.ctx.headers(),
                timeout=PUBLISH_TIMEOUT_S,
            )
        except Exception:
            raise EnclaveError(
                503, "The request queue is not available; try again later.", "bus_unavailable"
            ) from None
