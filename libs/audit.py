"""Audit events from any service: build them, publish with a JetStream ack, never drop them.

`AuditPublisher.emit()` publishes an `AuditEvent` on `audit.<tenant>.<kind>` and waits for
the stream's ack. When NATS cannot be reached (or does not ack in time) the event goes to
an on-disk outbox, one file per event, and a background task sends the outbox when the
bus is back. Event ids double as `Nats-Msg-Id` (JetStream drops a duplicate within its
window) and the audit service is idempotent on them, so sending twice is harmless and
sending never is impossible short of losing the disk. The outbox size is a metric
(`enclave.audit.outbox_size`) and a warning in the log.

Events carry digests of content (`digest()`), never the content itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from opentelemetry import metrics

from libs.context import RequestContext
from libs.events import AuditEvent, AuditExportRequest, AuditReply
from libs.subjects import Subjects

log = logging.getLogger("enclave.audit")

ACK_TIMEOUT_S = 2.0
FLUSH_INTERVAL_S = 1.0
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_outboxes: list[AuditPublisher] = []


def digest(content: bytes | str) -> str:
    """What an audit event says about content: its SHA-256, never the content."""
    data = content.encode() if isinstance(content, str) else content
    return "sha256:" + hashlib.sha256(data).hexdigest()


# UTC with microseconds and a fixed width, so that text order is time order.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def now_text() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def subject_token(tenant: str) -> str:
    """The tenant as one subject token (the event payload keeps the real name)."""
    if _SAFE_TOKEN.match(tenant):
        return tenant
    return "x" + hashlib.sha256(tenant.encode()).hexdigest()[:24]


def new_event(
    tenant: str,
    kind: str,
    action: str,
    *,
    service: str = "",
    ctx: RequestContext | None = None,
    **fields: Any,
) -> AuditEvent:
    base: dict[str, Any] = {}
    if ctx is not None:
        base = {"actor": ctx.actor, "role": ctx.role, "request_id": ctx.request_id}
    base.update({k: v for k, v in fields.items() if v is not None})
    return AuditEvent(
        id=secrets.token_hex(16),
        tenant=tenant,
        kind=kind,
        action=action,
        time=now_text(),
        service=service,
        **base,
    )


def _observe_outboxes(_options: object) -> list[metrics.Observation]:
    return [metrics.Observation(p.outbox_size(), {"service": p.service}) for p in list(_outboxes)]


metrics.get_meter("enclave.audit").create_observable_gauge(
    "enclave.audit.outbox_size",
    callbacks=[_observe_outboxes],
    description="Audit events waiting on disk for the bus",
)


class AuditPublisher:
    """Publishes audit events of one service; keeps them on disk while the bus is away."""

    def __init__(
        self,
        nc: NatsClient | None,
        subjects: Subjects,
        service: str,
        outbox: Path,
        ack_timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.service = service
        self.outbox = outbox
        self.ack_timeout_s = ack_timeout_s
        self.outbox.mkdir(parents=True, exist_ok=True)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # One JetStream context per connection, not one per event.
        self._js: JetStreamContext | None = None
        self._js_of: NatsClient | None = None
        _outboxes.append(self)

    # -- emitting --
    async def emit(
        self,
        action: str,
        ctx: RequestContext | None = None,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        **fields: Any,
    ) -> AuditEvent:
        """Build and publish one event; returns it whether it went to the bus or the outbox."""
        tenant = tenant or (ctx.tenant if ctx else "")
        event = new_event(
            tenant, kind or self.service, action, service=self.service, ctx=ctx, **fields
        )
        await self.publish(event)
        return event

    async def publish(self, event: AuditEvent) -> bool:
        """True when the stream acked it; False when it waits in the outbox."""
        data = event.model_dump_json(exclude_none=True).encode()
        if await self._send(event.tenant, event.kind, event.id, data):
            return True
        self._keep(event.id, data)
        return False

    async def _send(self, tenant: str, kind: str, event_id: str, data: bytes) -> bool:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return False
        if self._js is None or self._js_of is not nc:
            self._js, self._js_of = nc.jetstream(), nc
        try:
            await self._js.publish(
                self.subjects.audit(subject_token(tenant), kind),
                data,
                timeout=self.ack_timeout_s,
                headers={"Nats-Msg-Id": event_id},
            )
        except Exception as exc:  # any failure: the outbox keeps it
            log.warning("audit publish failed (%s); event %s kept in the outbox", exc, event_id)
            return False
        return True

    # -- the outbox --
    def _keep(self, event_id: str, data: bytes) -> None:
        # Name by time first, so that the outbox drains in the order events happened.
        name = f"{time.time_ns():020d}-{event_id}.json"
        tmp = self.outbox / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.outbox / name)
        self._wake.set()
        log.warning("audit outbox holds %d events", self.outbox_size())

    def outbox_size(self) -> int:
        try:
            return sum(1 for p in self.outbox.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return 0

    async def flush_outbox(self) -> int:
        """Send what the outbox holds, oldest first; stops at the first failure."""
        sent = 0
        for path in sorted(p for p in self.outbox.iterdir() if p.suffix == ".json"):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # another process of this host sent it
                continue
            try:
                event = AuditEvent.model_validate_json(data)
            except ValueError:
                log.error("audit outbox: %s is not an audit event; moved aside", path.name)
                path.rename(path.with_suffix(".bad"))
                continue
            if not await self._send(event.tenant, event.kind, event.id, data):
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            sent += 1
        return sent

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL_S)
            self._wake.clear()
            try:
                await self.flush_outbox()
            except Exception:
                log.exception("audit outbox flush failed")

    def start(self) -> AuditPublisher:
        """Start the background task that drains the outbox (events of earlier runs too)."""
        if self._task is None:
            self._task = asyncio.create_task(self._flusher())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush_outbox()
        with contextlib.suppress(ValueError):
            _outboxes.remove(self)


def outbox_dir(home: Path) -> Path:
    return home / "audit-outbox"


# -- reading a bundle from the audit service, page by page --

CHECKPOINT_PAGE = 1000
ENTRY_PAGE = 500


async def export_lines(
    ask: Callable[[AuditExportRequest], Awaitable[AuditReply]], tenant: str
) -> AsyncIterator[bytes]:
    """A tenant's export bundle from the audit service over request/reply, in chunks.

    `ask` sends one `AuditExportRequest` on `auditapi.export` and returns the reply (its
    error raised). Header first; then the stored checkpoints and the entries, each in
    pages that fit a bus message however long the chain; the export checkpoint last.
    """
    start = await ask(AuditExportRequest(tenant=tenant))
    yield "".join(line + "\n" for line in start.lines).encode()
    if start.count == 0:
        return
    after: int | None = 0
    while after is not None:
        page = await ask(
            AuditExportRequest(
                tenant=tenant,
                upto=start.count,
                part="checkpoints",
                after_seq=after,
                before_id=start.checkpoint_id,
                limit=CHECKPOINT_PAGE,
            )
        )
        if page.lines:
            yield "".join(line + "\n" for line in page.lines).encode()
        after = page.next_after_seq
    seq = 0
    while seq < start.count:
        page = await ask(
            AuditExportRequest(tenant=tenant, upto=start.count, after_seq=seq, limit=ENTRY_PAGE)
        )
        if not page.lines:
            raise RuntimeError(f"audit export of {tenant}: no entries after {seq}")
        yield "".join(line + "\n" for line in page.lines).encode()
        seq = page.next_after_seq if page.next_after_seq is not None else start.count
    yield "".join(line + "\n" for line in start.trailer).encode()
