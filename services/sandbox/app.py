"""sandbox wiring: answers sandbox.exec (request/reply, queue group "sandbox", so replicas
share the load) by running the code in a fresh sandbox, and records every exec on
audit.<tenant>.sandbox (tool, code digest, outcome, duration).
"""

from __future__ import annotations

import asyncio
import logging
import os

from faststream import FastStream
from nats.aio.msg import Msg
from pydantic import ValidationError

from libs.audit import AuditPublisher, digest, outbox_dir
from libs.bus import ensure_streams, event_bytes, make_broker
from libs.context import RequestContext
from libs.errors import ErrorInfo
from libs.events import SandboxExecReply, SandboxExecRequest
from libs.settings import Settings
from services.sandbox.executor import Backend, audit_attrs, execute
from services.sandbox.limits import Limits

log = logging.getLogger("enclave.sandbox")
QUEUE = "sandbox"
QUEUE_PER_SLOT = 16


def build_backend(settings: Settings, limits: Limits) -> Backend:
    if settings.sandbox_backend == "docker":
        from services.sandbox.adapters.docker_engine import DockerBackend

        return DockerBackend(
            limits, image=settings.sandbox_docker_image, concurrency=settings.sandbox_concurrency
        )
    if settings.sandbox_backend != "bwrap":
        raise SystemExit(
            f"ENCLAVE_SANDBOX_BACKEND={settings.sandbox_backend!r}: use bwrap or docker"
        )
    from services.sandbox.adapters.bwrap import BwrapBackend
    from services.sandbox.adapters.cgroups import Cgroups
    from services.sandbox.adapters.seccomp import build_filter

    missing = BwrapBackend.missing()
    if missing:
        raise SystemExit(
            f"the sandbox needs {', '.join(missing)}: apt-get install bubblewrap util-linux"
        )
    return BwrapBackend(
        limits,
        seccomp=build_filter(),
        concurrency=settings.sandbox_concurrency,
        uid_base=settings.sandbox_uid_base,
        warm=settings.sandbox_warm,
        cgroups=Cgroups.detect() if os.geteuid() == 0 else None,
    )


async def self_test(backend: Backend, limits: Limits) -> None:
    """Refuse to serve when no sandbox can run here (say why, rather than fail each exec)."""
    ctx = RequestContext(tenant="selftest", request_id="selftest")
    reply = await execute(
        SandboxExecRequest(
            ctx=ctx, language="python", code="print('ok')", timeout_s=limits.max_timeout_s
        ),
        backend,
        limits,
    )
    if reply.status != "ok" or reply.stdout.strip() != "ok":
        why = reply.error.message if reply.error else f"{reply.status}: {reply.stderr[-500:]}"
        raise SystemExit(f"the sandbox backend does not work on this host: {why}")
    log.info("sandbox ready: %s", backend.describe())


def build_app(settings: Settings) -> FastStream:
    broker = make_broker(settings, "sandbox")
    limits = Limits.from_settings(settings)
    backend = build_backend(settings, limits)
    pending: set[asyncio.Task[None]] = set()
    publisher: list[AuditPublisher] = []

    async def audit(request: SandboxExecRequest, reply: SandboxExecReply) -> None:
        try:
            await publisher[0].emit(
                "exec",
                request.ctx,
                outcome=reply.status if reply.error is None else "refused",
                digests={"code": digest(request.code)},
                attrs=audit_attrs(request, reply, backend.name),
            )
        except Exception:
            log.exception("could not record the exec of %s", request.ctx.request_id)

    async def serve(msg: Msg) -> None:
        try:
            request = SandboxExecRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            reply = SandboxExecReply(
                error=ErrorInfo(status=400, message=str(exc)[:500], code="invalid_value")
            )
            if msg.reply:
                await broker.connection.publish(msg.reply, event_bytes(reply))
            return
        try:
            reply = await execute(request, backend, limits)
        except Exception:
            log.exception("exec %s failed", request.ctx.request_id)
            reply = SandboxExecReply(
                error=ErrorInfo(status=500, message="The sandbox failed.", code="sandbox_failed")
            )
        if msg.reply:
            await broker.connection.publish(msg.reply, event_bytes(reply))
        await audit(request, reply)

    async def on_message(msg: Msg) -> None:
        # A task per message: nats-py runs one subscription's callbacks one at a time, and
        # a run takes from 0.1 s to a minute. The backend bounds how many run at once; past
        # a queue of QUEUE_PER_SLOT runs per slot, a replica says it is busy (503).
        if len(pending) >= settings.sandbox_concurrency * QUEUE_PER_SLOT:
            busy = ErrorInfo(
                status=503, message="The sandbox is busy; try again later.", code="sandbox_busy"
            )
            if msg.reply:
                reply = SandboxExecReply(error=busy)
                await broker.connection.publish(msg.reply, event_bytes(reply))
            return
        task = asyncio.create_task(serve(msg))
        pending.add(task)
        task.add_done_callback(pending.discard)

    app = FastStream(broker)

    @app.on_startup
    async def _start() -> None:
        await self_test(backend, limits)
        await broker.connect()
        await ensure_streams(broker.connection, settings)
        publisher.append(
            AuditPublisher(
                broker.connection, settings.subjects, "sandbox", outbox_dir(settings.home)
            ).start()
        )

    @app.after_startup
    async def _subscribe() -> None:
        await broker.connection.subscribe(
            settings.subjects.sandbox_exec, queue=QUEUE, cb=on_message
        )

    @app.on_shutdown
    async def _drain() -> None:
        if pending:
            await asyncio.wait(pending, timeout=settings.sandbox_max_timeout_s + 5)
        if publisher:
            await publisher[0].close()
        await backend.close()

    return app
