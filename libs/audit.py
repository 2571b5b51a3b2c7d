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
from nats.errors import MaxPayloadError
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError
from opentelemetry import metrics

from libs.context import TRACEPARENT_HEADER, RequestContext, new_request_id
from libs.events import AuditActions, AuditEvent, AuditExportRequest, AuditReply
from libs.subjects import Subjects

log = logging.getLogger("enclave.audit")

ACK_TIMEOUT_S = 2.0
FLUSH_INTERVAL_S = 1.0
# An encoded event is at most this big; a bigger one is clipped (see `bound_event`).
MAX_EVENT_BYTES = 16 * 1024
FIELD_CLIP = 256  # characters kept of each free-text field of a clipped event
# An outbox event whose sends failed this many times while others went through.
MAX_STRIKES = 3
# The tenant of records about events whose own tenant is unknown (unreadable files).
PLATFORM_TENANT = "_platform"
QUARANTINED = AuditActions.QUARANTINED
AWAY = "away"  # a send failed because the bus is not there (or did not ack in time)
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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


def _clip(value: str | None) -> str | None:
    if value is None or len(value) <= FIELD_CLIP:
        return value
    return value[: FIELD_CLIP - 1] + "…"


def bound_event(event: AuditEvent, data: bytes | None = None) -> tuple[AuditEvent, bytes]:
    """The event and its encoding, clipped to MAX_EVENT_BYTES where it is bigger.

    A clipped event keeps its id, tenant, kind, action and time; its free-text fields
    keep their first FIELD_CLIP characters; digests and attrs that do not fit give way to
    the record of what happened: `digests.oversize_event` (SHA-256 of the whole event),
    `attrs.oversize_bytes` and `attrs.clipped`. So the chain says that an event was too
    big, and of what, without carrying it (a client's 1 MiB model name, say).
    """
    if data is None:
        data = event.model_dump_json(exclude_none=True).encode()
    if len(data) <= MAX_EVENT_BYTES:
        return event, data
    log.warning(
        "audit event %s is %d bytes, over %d: clipped", event.id, len(data), MAX_EVENT_BYTES
    )
    record_digests = {"oversize_event": digest(data)}
    record_attrs: dict[str, str | bool | int] = {"oversize_bytes": len(data), "clipped": True}
    fields = {
        name: _clip(getattr(event, name))
        for name in (
            "service",
            "actor",
            "role",
            "request_id",
            "policy_version",
            "model",
            "adapter",
            "outcome",
        )
    }
    clipped = event.model_copy(
        update={
            **fields,
            "digests": {**event.digests, **record_digests},
            "attrs": {**event.attrs, **record_attrs},
        }
    )
    out = clipped.model_dump_json(exclude_none=True).encode()
    if len(out) > MAX_EVENT_BYTES:  # the digests or attrs were the bulk: keep the record only
        clipped = clipped.model_copy(update={"digests": record_digests, "attrs": record_attrs})
        out = clipped.model_dump_json(exclude_none=True).encode()
    return clipped, out


class Audit:
    """The audit side of one service process: its publishers, and their outbox gauges.

    A service's bootstrap builds one (`Audit()`, or `Audit(meter)`) and passes it to its
    publishers, `AuditPublisher(nc, subjects, service, outbox, audit=audit)`; nothing
    lives in module globals. A publisher built without one (as call sites not yet moved
    to a bootstrap do) gets its own, so its gauges still report.
    """

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        self.publishers: list[AuditPublisher] = []
        meter = meter or metrics.get_meter("enclave.audit")
        meter.create_observable_gauge(
            "enclave.audit.outbox_size",
            callbacks=[self._observe_outboxes],
            description="Audit events waiting on disk for the bus",
        )
        meter.create_observable_gauge(
            "enclave.audit.outbox_quarantined",
            callbacks=[self._observe_quarantined],
            description="Poisoned audit events moved aside from the outbox (see the log)",
        )

    def _observe_outboxes(self, _options: object) -> list[metrics.Observation]:
        return [
            metrics.Observation(p.outbox_size(), {"service": p.service})
            for p in list(self.publishers)
        ]

    def _observe_quarantined(self, _options: object) -> list[metrics.Observation]:
        return [
            metrics.Observation(p.quarantined(), {"service": p.service})
            for p in list(self.publishers)
        ]


class AuditPublisher:
    """Publishes audit events of one service; keeps them on disk while the bus is away."""

    def __init__(
        self,
        nc: NatsClient | None,
        subjects: Subjects,
        service: str,
        outbox: Path,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        audit: Audit | None = None,
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
        self._strikes: dict[str, int] = {}  # outbox file -> failed sends while others went
        self.audit = audit or Audit()
        self.audit.publishers.append(self)

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
        await self.publish(event, ctx.traceparent if ctx is not None else "")
        return event

    async def publish(self, event: AuditEvent, traceparent: str = "") -> bool:
        """True when the stream acked it; False when it waits in the outbox.

        An event over MAX_EVENT_BYTES is clipped first (`bound_event`), never sent whole.
        `traceparent` (the emitting hop's span) rides in the headers, so that the audit
        service's append joins the request's trace; the outbox keeps the event alone.
        """
        event, data = bound_event(event)
        if await self._send(event.tenant, event.kind, event.id, data, traceparent) is None:
            return True
        self._keep(event.id, data)
        return False

    async def _send(
        self, tenant: str, kind: str, event_id: str, data: bytes, traceparent: str = ""
    ) -> str | None:
        """None when the stream acked; else AWAY (try again later) or why it was refused."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            return AWAY
        if self._js is None or self._js_of is not nc:
            self._js, self._js_of = nc.jetstream(), nc
        try:
            await self._js.publish(
                self.subjects.audit(subject_token(tenant), kind),
                data,
                timeout=self.ack_timeout_s,
                headers={"Nats-Msg-Id": event_id, TRACEPARENT_HEADER: traceparent}
                if traceparent
                else {"Nats-Msg-Id": event_id},
            )
        except (MaxPayloadError, BadRequestError) as exc:  # this event will never pass
            log.error("audit event %s refused by the bus: %s", event_id, exc)
            return f"refused by the bus: {exc}"
        except Exception as exc:  # any other failure: the outbox keeps it
            log.warning("audit publish failed (%s); event %s kept in the outbox", exc, event_id)
            return AWAY
        return None

    # -- the outbox --
    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _keep(self, event_id: str, data: bytes) -> None:
        # Name by time first, so that the outbox drains in the order events happened.
        name = f"{time.time_ns():020d}-{event_id}.json"
        self._write(self.outbox / name, data)
        self._wake.set()
        log.warning("audit outbox holds %d events", self.outbox_size())

    def outbox_size(self) -> int:
        try:
            return sum(1 for p in self.outbox.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return 0

    @property
    def quarantine(self) -> Path:
        return self.outbox / "quarantine"

    def quarantined(self) -> int:
        try:
            return sum(1 for p in self.quarantine.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return 0

    async def flush_outbox(self) -> int:
        """Send what the outbox holds, oldest first; returns how many went.

        A poisoned event does not block the rest: one the bus refuses (too big, bad
        request), one that is not an audit event, or one that failed MAX_STRIKES times
        while later ones went through is moved to `quarantine/` and reported (log,
        `enclave.audit.outbox_quarantined`, and an `audit.quarantined` audit event with
        its digest). A pass stops when two sends in a row fail: the bus is away.
        """
        sent = 0
        failed: list[Path] = []  # failed in this pass; a later success makes them suspect
        for path in sorted(p for p in self.outbox.iterdir() if p.suffix == ".json"):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # another process of this host sent it
                continue
            try:
                event = AuditEvent.model_validate_json(data)
            except ValueError as exc:
                await self._quarantine(path, data, None, f"not an audit event: {exc}"[:200])
                continue
            bounded, small = bound_event(event, data)
            if small is not data:  # an event written whole by an older version: clip it
                self._move_to_quarantine(path, ".whole.json")
                self._write(path, small)
            why = await self._send(bounded.tenant, bounded.kind, bounded.id, small)
            if why is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                self._strikes.pop(path.name, None)
                sent += 1
                for earlier in failed:  # the bus works: those failed on their own
                    self._strikes[earlier.name] = self._strikes.get(earlier.name, 0) + 1
                    if self._strikes[earlier.name] >= MAX_STRIKES:
                        await self._quarantine(
                            earlier, None, None, f"failed {MAX_STRIKES} sends while others went"
                        )
                failed = []
            elif why != AWAY:
                await self._quarantine(path, small, bounded, why)
            else:
                failed.append(path)
                if len(failed) >= 2:
                    break
        return sent

    def _move_to_quarantine(self, path: Path, suffix: str = ".json") -> Path:
        self.quarantine.mkdir(parents=True, exist_ok=True)
        target = self.quarantine / (path.stem + suffix)
        os.replace(path, target)
        return target

    async def _quarantine(
        self, path: Path, data: bytes | None, event: AuditEvent | None, why: str
    ) -> None:
        """Move a poisoned outbox file aside and say so, in the log and in the audit chain."""
        try:
            data = data if data is not None else path.read_bytes()
            target = self._move_to_quarantine(path)
        except FileNotFoundError:
            return
        self._strikes.pop(path.name, None)
        log.error("audit outbox: %s quarantined in %s (%s)", path.name, target.parent, why)
        if event is None:
            with contextlib.suppress(ValueError):
                event = AuditEvent.model_validate_json(data)
        if event is not None and event.action == QUARANTINED:
            return  # no record of a record: the log says it
        record = new_event(
            event.tenant if event else PLATFORM_TENANT,
            self.service,
            QUARANTINED,
            service=self.service,
            digests={"event": digest(data)},
            attrs={
                "event_id": event.id if event else "",
                "bytes": len(data),
                "reason": why[:200],
                "file": path.name[:200],
            },
            outcome="quarantined",
        )
        await self.publish(record)

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL_S):
                    await self._wake.wait()
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
            self.audit.publishers.remove(self)


def outbox_dir(home: Path) -> Path:
    return home / "audit-outbox"


# -- what the platform records about itself (AuditActions); one helper per kind --

KEYS_KIND = "keys"
ADMIN_KIND = "admin"


def operator_context(tenant: str, actor: str = "") -> RequestContext:
    """Who acts from the command line: `cli:<login>` as admin (a CLI has no API key)."""
    if not actor:
        try:
            actor = "cli:" + os.getlogin()
        except OSError:
            actor = f"cli:uid{os.getuid()}"
    return RequestContext(
        tenant=tenant, request_id=new_request_id("cli"), actor=actor, role="admin"
    )


async def record_key_created(
    publisher: AuditPublisher,
    ctx: RequestContext,
    *,
    key_id: str,
    tenant: str,
    role: str,
    rate_limit_rpm: int | None = None,
) -> AuditEvent:
    """An API key was created (never its secret): in the chain of the key's tenant."""
    attrs: dict[str, str | bool | int] = {"key_id": key_id, "key_role": role}
    if rate_limit_rpm is not None:
        attrs["rate_limit_rpm"] = rate_limit_rpm
    return await publisher.emit(
        AuditActions.KEY_CREATED, ctx, tenant=tenant, kind=KEYS_KIND, attrs=attrs
    )


async def record_key_revoked(
    publisher: AuditPublisher, ctx: RequestContext, *, key_id: str, tenant: str, found: bool
) -> AuditEvent:
    """A revocation, or an attempt on a key the tenant does not have (outcome not_found)."""
    return await publisher.emit(
        AuditActions.KEY_REVOKED,
        ctx,
        tenant=tenant,
        kind=KEYS_KIND,
        outcome="ok" if found else "not_found",
        attrs={"key_id": key_id},
    )


async def record_admin_action(
    publisher: AuditPublisher,
    ctx: RequestContext,
    what: str,
    *,
    outcome: str = "ok",
    attrs: dict[str, str | bool | int] | None = None,
) -> AuditEvent:
    """Any admin action: `admin.<what>` (e.g. `tenant_data.delete`), with ids in attrs."""
    return await publisher.emit(
        f"{AuditActions.ADMIN}.{what}", ctx, kind=ADMIN_KIND, outcome=outcome, attrs=attrs or {}
    )


async def record_turn_redelivered(
    publisher: AuditPublisher,
    ctx: RequestContext,
    *,
    delivery: int,
    model: str | None = None,
) -> AuditEvent:
    """A turn the bus delivered again (its runtime died or did not ack): it runs again."""
    return await publisher.emit(
        AuditActions.TURN_REDELIVERED, ctx, model=model, attrs={"delivery": delivery}
    )


async def record_turn_dropped(
    publisher: AuditPublisher,
    ctx: RequestContext | None,
    *,
    reason: str,
    delivery: int = 1,
    model: str | None = None,
    content: bytes | None = None,
) -> AuditEvent:
    """A turn not run: its client had gone, or the message could not be read (`ctx` None:
    recorded under PLATFORM_TENANT with the message's digest)."""
    return await publisher.emit(
        AuditActions.TURN_DROPPED,
        ctx,
        tenant=None if ctx else PLATFORM_TENANT,
        model=model,
        outcome="dropped",
        digests={"message": digest(content)} if content is not None else {},
        attrs={"reason": reason[:200], "delivery": delivery},
    )


async def record_access_denied(
    publisher: AuditPublisher,
    ctx: RequestContext,
    *,
    target_tenant: str,
    operation: str,
    reason: str = "cross_tenant",
) -> list[AuditEvent]:
    """A credential of `ctx.tenant` tried to act in `target_tenant` and was refused: in the
    chains of both tenants (the target learns it was tried, the caller's admins who tried)."""
    attrs: dict[str, str | bool | int] = {
        "credential_tenant": ctx.tenant,
        "target_tenant": target_tenant,
        "operation": operation,
        "reason": reason,
    }
    events = [
        await publisher.emit(
            AuditActions.ACCESS_DENIED, ctx, tenant=tenant, outcome="denied", attrs=attrs
        )
        for tenant in dict.fromkeys([target_tenant, ctx.tenant])
    ]
    return events


async def record_external_call(
    publisher: AuditPublisher,
    ctx: RequestContext,
    *,
    provider: str,
    pool: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    redactions: int,
    sent: bytes,
    outcome: str = "ok",
) -> AuditEvent:
    """A request that left the platform for an external provider: who (the context), to
    which provider and pool, the model, its tokens, how many redactions the input screening
    applied, and the digest of exactly what was sent."""
    return await publisher.emit(
        AuditActions.EXTERNAL_CALL,
        ctx,
        model=model,
        outcome=outcome,
        digests={"sent": digest(sent)},
        attrs={
            "provider": provider,
            "pool": pool,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "redactions": redactions,
        },
    )


# -- reading a bundle from the audit service, page by page --

CHECKPOINT_PAGE = 1000
ENTRY_PAGE = 500


async def export_lines(
    ask: Callable[[AuditExportRequest], Awaitable[AuditReply]],
    tenant: str,
    ctx: RequestContext | None = None,
) -> AsyncIterator[bytes]:
    """A tenant's export bundle from the audit service over request/reply, in chunks.

    `ask` sends one `AuditExportRequest` on `auditapi.export` and returns the reply (its
    error raised). Header first; then the stored checkpoints and the entries, each in
    pages that fit a bus message however long the chain; the export checkpoint last.
    """
    start = await ask(AuditExportRequest(tenant=tenant, ctx=ctx))  # the export is audited
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
