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
from datetime import datetime
from typing import Any

from faststream import Context
from faststream.middlewares import AckPolicy
from faststream.nats import NatsBroker, PullSub
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from libs.bus import jstream, stream_configs
from libs.db.engine import make_engine, migrate_async
from libs.events import AuditEvent, AuditExportRequest, AuditSearch, AuditVerifyRequest
from libs.metrics import StageMetrics
from libs.rpc import Bus, serve_broker
from libs.signing import load_private_key
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
    audit_stream = next(c for c in stream_configs(settings) if c.name == subjects.audit_stream_name)

    @broker.subscriber(
        subjects.audit_all,
        stream=jstream(audit_stream),
        durable="audit",
        pull_sub=PullSub(batch_size=cfg.batch_size, timeout=cfg.batch_timeout_s, batch=True),
        config=ConsumerConfig(ack_wait=cfg.ack_wait_s, max_ack_pending=50_000),
        ack_policy=AckPolicy.MANUAL,
    )
    async def on_events(batch: list[Any], message: Any = Context("message")) -> None:
        events: list[AuditEvent] = []
        for item in batch:
            try:
                events.append(AuditEvent.model_validate(item))
            except ValidationError as exc:
                # Not an audit event: it cannot join a chain; say so loudly, once.
                log.error("dropping a malformed audit message: %s", exc.errors()[:1])
        try:
            await service.append(events)
        except Exception:
            log.exception("audit append failed; the batch will be redelivered")
            await message.nack(delay=1.0)
            return
        await message.ack()
        metrics.audit_appended([event_epoch(e) for e in events])

    serve_broker(broker, subjects.audit_api_search, AuditSearch, service.search, queue="audit")
    serve_broker(
        broker, subjects.audit_api_verify, AuditVerifyRequest, service.verify, queue="audit"
    )
    serve_broker(
        broker, subjects.audit_api_export, AuditExportRequest, service.export_page, queue="audit"
    )
    return Audit(service, cfg)
