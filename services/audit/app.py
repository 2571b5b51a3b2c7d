"""audit wiring: a durable JetStream pull consumer on `audit.>` appends to the chains;
`auditapi.*` request/reply serves search, verify and export to the gateway.

Every replica pulls batches from the one durable consumer `audit`. A batch is acked only
after its transaction committed, so a replica killed mid-batch leaves the batch to be
redelivered; the append skips event ids already in the chain, so nothing is doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from faststream import Context, FastStream
from faststream.middlewares import AckPolicy
from faststream.nats import PullSub
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from libs.bus import ensure_streams, jstream, make_broker, stream_configs
from libs.db.engine import make_engine, migrate_async
from libs.errors import ErrorInfo
from libs.events import (
    AuditEvent,
    AuditExportRequest,
    AuditReply,
    AuditSearch,
    AuditVerifyRequest,
)
from libs.settings import Settings
from services.audit.adapters.keys import HmacKeySource, ensure_keys, load_private_key
from services.audit.adapters.sql import AuditStore
from services.audit.config import load_audit_settings
from services.audit.service import AuditService

log = logging.getLogger("enclave.audit")


def build_app(settings: Settings) -> FastStream:
    cfg = load_audit_settings(settings)
    assert cfg.key_file and cfg.signing_key_file and cfg.public_key_file
    broker = make_broker(settings, "audit")
    subjects = settings.subjects
    audit_stream = next(c for c in stream_configs(settings) if c.name == subjects.audit_stream_name)
    state: dict[str, Any] = {}

    def service() -> AuditService:
        return state["service"]  # type: ignore[no-any-return]

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
            await service().append(events)
        except Exception:
            log.exception("audit append failed; the batch will be redelivered")
            await message.nack(delay=1.0)
            return
        await message.ack()

    async def answer(coro: Any) -> AuditReply:
        try:
            return await coro  # type: ignore[no-any-return]
        except Exception as exc:
            log.exception("audit request failed")
            return AuditReply(error=ErrorInfo(status=500, message=f"audit: {exc}"))

    @broker.subscriber(subjects.audit_api_search, queue="audit")
    async def search(req: AuditSearch) -> AuditReply:
        return await answer(service().search(req))

    @broker.subscriber(subjects.audit_api_verify, queue="audit")
    async def verify(req: AuditVerifyRequest) -> AuditReply:
        return await answer(service().verify(req))

    @broker.subscriber(subjects.audit_api_export, queue="audit")
    async def export(req: AuditExportRequest) -> AuditReply:
        return await answer(service().export_page(req))

    app = FastStream(broker)

    @app.on_startup
    async def _start() -> None:
        await migrate_async(settings)
        created = ensure_keys(cfg.key_file, cfg.signing_key_file, cfg.public_key_file)
        for path in created:
            log.warning("created audit key %s", path)
        state["service"] = AuditService(
            AuditStore(make_engine(settings.sqlalchemy_url)),
            HmacKeySource(None if cfg.hmac_keys else cfg.key_file, cfg.hmac_keys),
            load_private_key(cfg.signing_key_file),
        )
        # The consumer is created when the broker starts: its stream must exist first.
        await broker.connect()
        await ensure_streams(broker.connection, settings)

    async def checkpoints() -> None:
        while True:
            await asyncio.sleep(cfg.checkpoint_interval_s)
            try:
                await service().checkpoint_touched()
            except Exception:
                log.exception("audit checkpoint failed")

    @app.after_startup
    async def _ticker() -> None:
        state["ticker"] = asyncio.create_task(checkpoints())

    @app.on_shutdown
    async def _stop() -> None:
        ticker = state.pop("ticker", None)
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    @app.after_shutdown
    async def _last() -> None:
        if "service" in state:
            with contextlib.suppress(Exception):
                await service().checkpoint_touched()
            await service().store.engine.dispose()

    return app
