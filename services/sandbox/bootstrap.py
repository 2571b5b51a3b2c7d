"""Builds the sandbox service: the backend chosen and self-tested (no sandbox, no service),
the audit publisher ready, before it answers sandbox.exec (request/reply, queue group
"sandbox", so replicas share the load) by running the code in a fresh sandbox. The replica
that takes an exec says so at once (libs/rpc.py: `serve(accepted=...)`) and answers pings
on sandbox.alive.<replica> while it runs, so that its caller stops waiting as soon as it is
killed. Every exec is recorded on audit.<tenant>.sandbox (tool, code digest, outcome,
duration).
"""

from __future__ import annotations

import asyncio
import logging
import os

from faststream.nats import NatsBroker
from nats.aio.subscription import Subscription

from libs.audit import AuditPublisher, digest, outbox_dir
from libs.context import RequestContext
from libs.errors import ErrorInfo
from libs.events import SandboxExecReply, SandboxExecRequest
from libs.metrics import StageMetrics, replica_id
from libs.rpc import Bus, serve, serve_alive
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
    from libs.seccomp import build_filter
    from services.sandbox.adapters.bwrap import BwrapBackend
    from services.sandbox.adapters.cgroups import Cgroups

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


class Sandbox:
    def __init__(
        self,
        bus: Bus,
        backend: Backend,
        limits: Limits,
        audit: AuditPublisher,
        metrics: StageMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.backend = backend
        self.limits = limits
        self.audit = audit
        self.concurrency = max(1, bus.settings.sandbox_concurrency)
        # The runs in flight (each request has its own task: `serve(concurrent=True)`),
        # and the audit writes that follow their replies.
        self.running: set[asyncio.Task[object]] = set()
        self.pending: set[asyncio.Task[None]] = set()
        self.subscription: Subscription | None = None
        self.alive: Subscription | None = None
        # Where this replica answers the liveness pings of the callers of its runs.
        self.alive_subject = bus.subjects.sandbox_alive(replica_id().replace(".", "_"))
        # Busy ratio and queue depth over the backend's slots, read at each scrape: what
        # KEDA's trigger for the sandbox reads (deploy/helm values.yaml).
        self.metrics = metrics or StageMetrics("sandbox")
        self.metrics.sample_work(self.busy_ratio, self.queued)

    def busy_ratio(self) -> float:
        return min(len(self.running), self.concurrency) / self.concurrency

    def queued(self) -> float:
        return max(0, len(self.running) - self.concurrency)

    async def handle(self, request: SandboxExecRequest) -> SandboxExecReply:
        # The backend bounds how many run at once; past a queue of QUEUE_PER_SLOT runs per
        # slot, a replica says it is busy (503).
        if len(self.running) >= self.concurrency * QUEUE_PER_SLOT:
            busy = ErrorInfo(
                status=503, message="The sandbox is busy; try again later.", code="sandbox_busy"
            )
            return SandboxExecReply(error=busy)
        task = asyncio.current_task()
        assert task is not None
        # Until its reply is sent too (serve's task ends with the publish).
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        try:
            reply = await execute(request, self.backend, self.limits)
        except Exception:
            log.exception("exec %s failed", request.ctx.request_id)
            reply = SandboxExecReply(
                error=ErrorInfo(status=500, message="The sandbox failed.", code="sandbox_failed")
            )
        # After the reply, not before: the audit write is off the request's latency.
        record = asyncio.create_task(self._record(request, reply))
        self.pending.add(record)
        record.add_done_callback(self.pending.discard)
        return reply

    async def _record(self, request: SandboxExecRequest, reply: SandboxExecReply) -> None:
        try:
            await self.audit.emit(
                "exec",
                request.ctx,
                outcome=reply.status if reply.error is None else "refused",
                digests={"code": digest(request.code)},
                attrs=audit_attrs(request, reply, self.backend.name),
            )
        except Exception:
            log.exception("could not record the exec of %s", request.ctx.request_id)

    async def start(self) -> None:
        self.audit.start()
        self.alive = await serve_alive(self.bus.nc, self.alive_subject)
        # A raw subscription, a task per request: a run takes from 0.1 s to a minute, and
        # nats-py would run one subscription's callbacks one at a time.
        self.subscription = await serve(
            self.bus.nc,
            self.bus.subjects.sandbox_exec,
            SandboxExecRequest,
            self.metrics.handler("sandbox.exec", self.handle),
            queue=QUEUE,
            concurrent=True,
            accepted=self.alive_subject,
        )

    async def stop(self) -> None:
        if self.subscription is not None:
            await self.subscription.unsubscribe()
        if self.running:
            await asyncio.wait(self.running, timeout=self.bus.settings.sandbox_max_timeout_s + 5)
        if self.alive is not None:  # after the runs: their callers still ping
            await self.alive.unsubscribe()
        if self.pending:
            await asyncio.wait(self.pending, timeout=10)
        await self.audit.close()
        await self.backend.close()


async def build(bus: Bus, broker: NatsBroker) -> Sandbox:
    settings = bus.settings
    limits = Limits.from_settings(settings)
    backend = build_backend(settings, limits)
    await self_test(backend, limits)
    audit = AuditPublisher(bus.nc, bus.subjects, "sandbox", outbox_dir(settings.home))
    return Sandbox(bus, backend, limits, audit, StageMetrics("sandbox"))
