"""agent_runtime wiring: consumes chat.requested from the JetStream work queue, runs turns.

All replicas share one durable consumer through a deliver group, so each turn runs on
exactly one replica; a message is acked only when its turn is done, so a replica that
dies mid-turn leaves it to be redelivered to another.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import Any, Literal, TypeVar

from faststream import FastStream
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from libs.audit import AuditPublisher, outbox_dir
from libs.bus import ensure_streams, event_bytes, make_broker, stream_configs
from libs.context import WORKER_HEADER, RequestContext
from libs.errors import ErrorInfo, no_worker
from libs.events import (
    ChatRequested,
    GenerateAccepted,
    GenerateRequest,
    GroundReply,
    GroundRequest,
    GuardrailCheck,
    GuardrailVerdict,
    MemoryStoreRequested,
    RetrieveReply,
    RetrieveRequest,
    RouteReply,
    RouteRequest,
    TurnEvent,
)
from libs.guardrails_client import ask_guardrails
from libs.settings import Settings
from libs.telemetry import attributes, parent_context, setup_tracing, with_span
from services.agent_runtime.pipeline import DeltaSource, run_turn
from services.agent_runtime.turn_audit import record_turn

log = logging.getLogger("enclave.agent_runtime")
INTERNAL = ErrorInfo(
    status=500, message="The turn failed inside the runtime.", code="internal_error"
)
ROUTER_DOWN = ErrorInfo(status=503, message="The inference router is not available.")
# Beyond the router's own wait for a worker: its registry lookup may touch SQL.
ROUTER_MARGIN_S = 3.0
MEMORY_DOWN = ErrorInfo(status=503, message="The memory service is not available.")
# A reply model of the memory service: each carries an `error`.
Reply = TypeVar("Reply", RetrieveReply, GroundReply)


class NatsDeltaSource:
    def __init__(self, subject: str, key: str, owner: NatsTurnPorts) -> None:
        self.subject = subject
        self.key = key
        self.worker = ""
        self.owner = owner
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def next(self, timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        self.owner.sources.pop(self.key, None)


class NatsTurnPorts:
    """The turn's ports on NATS. Deltas of every turn of this replica arrive on one
    wildcard subscription: no SUB/UNSUB per turn."""

    def __init__(self, settings: Settings, nc: NatsClient, replica: str) -> None:
        self.nc = nc
        self.subjects = settings.subjects
        self.replica = replica
        self.timeout_s = 2 * settings.worker_accept_timeout_s + ROUTER_MARGIN_S
        self.accept_timeout_s = settings.worker_accept_timeout_s
        self.route_cache_s = settings.route_cache_s
        self.passthrough_cap_s = settings.guard_passthrough_s
        self.routes: dict[tuple[str, str, str], tuple[RouteReply, float]] = {}
        self.memory_timeout_s = settings.memory_timeout_s
        self.sources: dict[str, NatsDeltaSource] = {}
        # tenant -> (its last "allowed, unchanged" input verdict, until when it holds)
        self.passthrough: dict[str, tuple[GuardrailVerdict, float]] = {}
        self.policy_generation = 0
        self._prefix_len = len(self.subjects.inference_deltas(replica, ""))

    async def subscribe(self) -> None:
        await self.nc.subscribe(self.subjects.inference_deltas_of(self.replica), cb=self._on_delta)
        await self.nc.subscribe(self.subjects.guardrails_policy_changed, cb=self._on_policy_changed)

    async def _on_policy_changed(self, msg: Msg) -> None:
        self.policy_generation += 1
        self.passthrough.clear()

    async def _on_delta(self, msg: Msg) -> None:
        source = self.sources.get(msg.subject[self._prefix_len :])
        if source is None:
            return  # a turn that already ended
        if not source.worker and msg.headers:
            source.worker = msg.headers.get(WORKER_HEADER, "")
        source.queue.put_nowait(msg.data)

    async def open_deltas(self, request_id: str) -> DeltaSource:
        key = f"{request_id}-{secrets.token_hex(3)}"
        source = NatsDeltaSource(self.subjects.inference_deltas(self.replica, key), key, self)
        self.sources[key] = source
        return source

    async def route(
        self, ctx: RequestContext, model: str, kind: Literal["chat", "completion"]
    ) -> RouteReply:
        """The router's answer for (tenant, model, kind), reused for `route_cache_s`."""
        key = (ctx.tenant, model, kind)
        cached = self.routes.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        ask = RouteRequest(ctx=ctx, model=model, kind=kind)
        try:
            msg = await self.nc.request(
                self.subjects.inference_route,
                event_bytes(ask),
                timeout=self.timeout_s,
                headers=ctx.headers(),
            )
        except Exception:
            return RouteReply(error=ROUTER_DOWN)
        reply = RouteReply.model_validate_json(msg.data)
        if reply.error is None:
            self.routes[key] = (reply, time.monotonic() + self.route_cache_s)
        return reply

    async def request_generation(
        self, request: GenerateRequest, route: RouteReply
    ) -> GenerateAccepted:
        # The router decides the pool; the runtime hands the request to the pool itself,
        # so the router is not a hop of every request (bench/gateway.py).
        if route.error is not None or route.pool is None:
            return GenerateAccepted(accepted=False, error=route.error or ROUTER_DOWN)
        request.pool, request.adapter, request.timeout_s = (
            route.pool,
            route.adapter,
            route.timeout_s,
        )
        try:
            msg = await self.nc.request(
                self.subjects.inference_worker(route.pool),
                event_bytes(request),
                timeout=self.accept_timeout_s,
                headers=request.ctx.headers(),
            )
        except Exception:
            # No worker now: ask the router again next time (it may know a fallback).
            self.routes.pop((request.ctx.tenant, request.model, request.kind), None)
            return GenerateAccepted(accepted=False, error=no_worker(route.pool))
        return GenerateAccepted.model_validate_json(msg.data)

    async def emit_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        await self.nc.publish(subject, data, headers=headers)

    async def _ask_memory(self, subject: str, request: Any, reply: type[Reply]) -> Reply:
        """The memory service's answer, or an error reply when it does not answer."""
        try:
            msg = await self.nc.request(
                subject,
                event_bytes(request),
                timeout=self.memory_timeout_s,
                headers=request.ctx.headers(),
            )
        except Exception:
            return reply(error=MEMORY_DOWN)
        return reply.model_validate_json(msg.data)

    async def retrieve_context(self, request: RetrieveRequest) -> RetrieveReply:
        return await self._ask_memory(self.subjects.memory_retrieve, request, RetrieveReply)

    async def store_memory(self, event: MemoryStoreRequested) -> None:
        # JetStream: the turn is remembered even if the memory service is down right now.
        try:
            await self.nc.jetstream().publish(
                self.subjects.memory_store, event_bytes(event), headers=event.ctx.headers()
            )
        except Exception:  # the answer is delivered; a lost memory must not redo the turn
            log.warning("memory.store publish failed for %s", event.ctx.request_id)

    async def ground(self, request: GroundRequest) -> GroundReply:
        return await self._ask_memory(self.subjects.memory_ground, request, GroundReply)

    async def guard(self, subject: str, check: GuardrailCheck) -> GuardrailVerdict:
        # Fail closed: without a verdict nothing goes to a model or to the client.
        is_input = subject == self.subjects.guardrails_input and check.agent is None
        if is_input:
            held = self.passthrough.get(check.ctx.tenant)
            if held is not None and held[1] > time.monotonic():
                texts = [m.content or "" for m in check.messages]
                return held[0].model_copy(update={"texts": texts})
        generation = self.policy_generation
        verdict = await ask_guardrails(self.nc, subject, check)
        if (
            is_input
            and verdict.passthrough_s > 0
            and verdict.allowed
            and verdict.error is None
            and not verdict.pseudonyms
            # A policy change announced while this check was in flight voids its grant.
            and generation == self.policy_generation
        ):
            until = time.monotonic() + min(verdict.passthrough_s, self.passthrough_cap_s)
            self.passthrough[check.ctx.tenant] = (verdict, until)
        return verdict


def build_app(settings: Settings) -> FastStream:
    broker = make_broker(settings, "agent_runtime")
    # A subject token: no dots.
    runtime_id = f"{socket.gethostname()}-{os.getpid()}".replace(".", "_")
    chat = stream_configs(settings)[0]
    ports = NatsTurnPorts(settings, None, runtime_id)  # type: ignore[arg-type]  # set on start
    slots = asyncio.Semaphore(settings.runtime_concurrency)
    tracer = setup_tracing("agent_runtime", settings.trace_dir)
    running: set[asyncio.Task[None]] = set()
    audit: list[AuditPublisher] = []

    async def turn(msg: Msg) -> None:
        async with slots:
            try:
                event = ChatRequested.model_validate_json(msg.data)
            except ValidationError:
                log.error("dropping a chat.requested this runtime cannot read (schema version?)")
                await msg.term()
                return
            if time.time() - event.created > settings.gateway_timeout_s:
                # Redelivered after its client gave up (a replica died mid-turn): running
                # it again would only spend a worker on an answer nobody reads.
                log.warning("dropping turn %s: its client has gone", event.ctx.request_id)
                await msg.term()
                return
            last: bytes | None = None
            failure: Exception | None = None
            try:
                with tracer.start_as_current_span(
                    "turn",
                    context=parent_context(event.ctx),
                    kind=SpanKind.CONSUMER,
                    attributes=attributes(event.ctx, **{"gen_ai.request.model": event.model}),
                ) as span:
                    event.ctx = with_span(event.ctx, span)
                    last = await run_turn(
                        event, ports, settings.subjects, settings.upstream_timeout_s, runtime_id
                    )
            except Exception as exc:
                failure = exc
                log.exception("turn %s failed", event.ctx.request_id)
                await ports.emit_raw(
                    event.reply_subject,
                    event_bytes(TurnEvent(error=INTERNAL, done=True)),
                    event.ctx.headers(),
                )
            await record_turn(audit[0], event, last, failure)
            # Acked only now, audit record included: a replica that dies mid-turn leaves
            # the turn to another.
            await msg.ack()

    async def on_chat_requested(msg: Msg) -> None:
        task = asyncio.create_task(turn(msg))
        running.add(task)
        task.add_done_callback(running.discard)

    app = FastStream(broker)

    @app.after_startup
    async def _consume() -> None:
        nc = broker.connection
        await ensure_streams(nc, settings)
        ports.nc = nc
        audit.append(
            AuditPublisher(nc, settings.subjects, "runtime", outbox_dir(settings.home)).start()
        )
        await ports.subscribe()
        # Raw JetStream push consumer, shared by every replica as a deliver group: the
        # FastStream subscriber adds 0.25 ms to every turn (bench/gateway.py).
        await nc.jetstream().subscribe(
            settings.subjects.chat_requested,
            queue="agent_runtime",
            durable="agent_runtime",
            stream=chat.name,
            cb=on_chat_requested,
            manual_ack=True,
            config=ConsumerConfig(ack_wait=300, max_ack_pending=10_000),
        )

    @app.on_shutdown
    async def _drain() -> None:
        if running:
            await asyncio.wait(running, timeout=30)
        if audit:
            await audit[0].close()

    return app
