"""Builds the audit service: keys ensured, the store and signer ready, before it consumes.

A durable JetStream pull consumer on `audit.>` appends to the chains; `auditapi.*`
request/reply serves search, verify and export to the gateway. Every replica pulls
batches from the one durable consumer `audit`. A batch is acked only after its transaction
committed, so a replica killed mid-batch leaves the batch to be redelivered; the append
skips event ids already in the chain, so nothing is doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any

from faststream import Context
from faststream.middlewares import AckPolicy
from faststream.nats import NatsBroker, PullSub
from nats.js.api import ConsumerConfig
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from libs.bus import jstream, stream_configs
from libs.context import TRACEPARENT_HEADER
from libs.db.engine import make_engine, migrate_async
from libs.events import AuditEvent, AuditExportRequest, AuditSearch, AuditVerifyRequest
from libs.metrics import StageMetrics
from libs.rpc import Bus, serve_broker
from libs.signing import load_private_key
from libs.telemetry import setup_tracing
from services.audit.adapters.keys import HmacKeySource, ensure_keys
from services.audit.adapters.sql import AuditStore
from services.audit.config import AuditSettings, load_audit_settings
from services.audit.service import AuditService

log = logging.getLogger("enclave.audit")


class Audit:
    def __init__(self, service: AuditService, cfg: AuditSettings) -> None:
        self.service = service
        self.cfg = cfg
        self.ticker: asyncio.Task[None] | None = None

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.checkpoint_interval_s)
            try:
                await self.service.checkpoint_touched()
            except Exception:
                log.exception("audit checkpoint failed")

    async def start(self) -> None:
        self.ticker = asyncio.create_task(self._checkpoints())

    async def stop(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ticker
        with contextlib.suppress(Exception):
            await self.service.checkpoint_touched()
        await self.service.store.engine.dispose()


def event_epoch(event: AuditEvent) -> float:
    """An event's own time (`YYYY-MM-DDTHH:MM:SS.ffffffZ`) in epoch seconds."""
    return datetime.fromisoformat(event.time).timestamp()


def trace_appends(
    tracer: trace.Tracer,
    appended: list[tuple[AuditEvent, dict[str, str]]],
    started_ns: int,
    ended_ns: int,
) -> None:
    """One `audit.append` span per event that came with a traceparent (its emitting hop):
    the batch's append, from its start to its commit, in that request's trace."""
    for event, headers in appended:
        traceparent = headers.get(TRACEPARENT_HEADER)
        if not traceparent:
            continue  # from the outbox, or from a caller outside any trace
        span = tracer.start_span(
            "audit.append",
            context=propagate.extract({TRACEPARENT_HEADER: traceparent}),
            kind=SpanKind.CONSUMER,
            start_time=started_ns,
            attributes={
                "enclave.tenant": event.tenant,
                "enclave.request_id": event.request_id,
                "enclave.audit.action": event.action,
                "enclave.audit.batch": len(appended),
            },
        )
        span.end(end_time=ended_ns)


async def build(bus: Bus, broker: NatsBroker) -> Audit:
    settings, subjects = bus.settings, bus.subjects
    cfg = load_audit_settings(settings)
    assert cfg.key_file and cfg.signing_key_file and cfg.public_key_file
    await migrate_async(settings)
    for path in ensure_keys(cfg.key_file, cfg.signing_key_file, cfg.public_key_file):
        log.warning("created audit key %s", path)
    service = AuditService(
        AuditStore(make_engine(settings.sqlalchemy_url)),
        HmacKeySource(None if cfg.hmac_keys else cfg.key_file, cfg.hmac_keys),
        load_private_key(cfg.signing_key_file),
    )
    metrics = StageMetrics("audit")
    tracer = setup_tracing("audit", settings.trace_dir, settings.otlp_endpoint)
    traced = not isinstance(tracer, trace.NoOpTracer)
    audit_stream = next(c for c in stream_configs(settings) if c.name == subjects.audit_stream_name)

    @broker.subscriber(
        subjects.audit_all,
        stream=jstream(audit_stream),
        durable="audit",
        pull_sub=PullSub(batch_size=cfg.batch_size, timeout=cfg.batch_timeout_s, batch=True),
        config=ConsumerConfig(ack_wait=cfg.ack_wait_s, max_ack_pending=50_000),
        ack_policy=AckPolicy.MANUAL,
        # Fetch replies on this service's own inbox (the bus permissions allow no other).
        inbox_prefix=f"{settings.nats_inbox_prefix}.".encode(),
    )
    async def on_events(batch: list[Any], message: Any = Context("message")) -> None:
        events: list[AuditEvent] = []
        headers: list[dict[str, str]] = []
        batch_headers = list(getattr(message, "batch_headers", None) or [])
        for i, item in enumerate(batch):
            try:
                events.append(AuditEvent.model_validate(item))
            except ValidationError as exc:
                # Not an audit event: it cannot join a chain; say so loudly, once.
                log.error("dropping a malformed audit message: %s", exc.errors()[:1])
                continue
            headers.append(batch_headers[i] if i < len(batch_headers) else {})
        started_ns = time.time_ns()
        try:
            await service.append(events)
        except Exception:
            log.exception("audit append failed; the batch will be redelivered")
            await message.nack(delay=1.0)
            return
        await message.ack()
        metrics.audit_appended([event_epoch(e) for e in events])
        if traced:
            appended = list(zip(events, headers, strict=True))
            trace_appends(tracer, appended, started_ns, time.time_ns())

    serve_broker(broker, subjects.audit_api_search, AuditSearch, service.search, queue="audit")
    serve_broker(
        broker, subjects.audit_api_verify, AuditVerifyRequest, service.verify, queue="audit"
    )
    serve_broker(
        broker, subjects.audit_api_export, AuditExportRequest, service.export_page, queue="audit"
    )
    return Audit(service, cfg)
