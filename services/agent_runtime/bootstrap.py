"""Builds the agent runtime: everything a turn needs, constructed before the first turn.

All replicas share one durable JetStream consumer through a deliver group, so each turn
runs on exactly one replica; a message is acked only when its turn is done and its audit
record acked, so a replica that dies mid-turn leaves it to be redelivered to another.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError
from nats.js.api import ConsumerConfig
from opentelemetry.trace import SpanKind, Tracer
from pydantic import ValidationError

from libs.audit import (
    AuditPublisher,
    outbox_dir,
    record_turn_dropped,
    record_turn_redelivered,
)
from libs.bus import stream_configs
from libs.errors import ErrorInfo
from libs.events import ChatRequested, DelegateRequested, TurnEvent
from libs.generation import Generation, GenerationClient, RouteCache
from libs.metrics import StageMetrics
from libs.rpc import Bus, ReplyRouter, serve
from libs.telemetry import attributes, parent_context, setup_tracing, with_span
from services.agent_runtime.adapters.agent_ports import NatsAgentPorts
from services.agent_runtime.agent_runner import AgentRunner
from services.agent_runtime.agents import agent_name
from services.agent_runtime.passthrough import InputPassthrough
from services.agent_runtime.pipeline import run_turn
from services.agent_runtime.ports import RuntimePorts
from services.agent_runtime.turn_audit import record_turn

log = logging.getLogger("enclave.agent_runtime")
INTERNAL = ErrorInfo(
    status=500, message="The turn failed inside the runtime.", code="internal_error"
)


class Runtime:
    """One runtime replica: takes turns from the work queue and runs them."""

    def __init__(
        self,
        bus: Bus,
        ports: RuntimePorts,
        deltas: ReplyRouter,
        audit: AuditPublisher,
        agents: AgentRunner | None = None,
        metrics: StageMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.metrics = metrics or StageMetrics("agent_runtime")
        self.agents = agents
        self.settings = bus.settings
        self.ports = ports
        self.deltas = deltas
        self.audit = audit
        self.tracer: Tracer = setup_tracing(
            "agent_runtime", self.settings.trace_dir, self.settings.otlp_endpoint
        )
        self.slots = asyncio.Semaphore(self.settings.runtime_concurrency)
        self.running: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        nc, subjects = self.bus.nc, self.bus.subjects
        self.audit.start()
        await self.deltas.start()
        await nc.subscribe(subjects.guardrails_policy_changed, cb=self._on_policy_changed)
        if self.agents is not None:
            # Delegated child turns: any replica takes one, each in its own task.
            await serve(
                nc,
                subjects.agent_delegate,
                DelegateRequested,
                self.agents.delegated,
                queue="agent_runtime",
                concurrent=True,
            )
        # Raw JetStream push consumer, shared by every replica as a deliver group: the
        # FastStream subscriber adds 0.25 ms to every turn (bench/gateway.py).
        await nc.jetstream().subscribe(
            subjects.chat_requested,
            queue="agent_runtime",
            durable="agent_runtime",
            stream=stream_configs(self.settings)[0].name,
            cb=self._on_chat_requested,
            manual_ack=True,
            config=ConsumerConfig(ack_wait=300, max_ack_pending=10_000),
        )

    async def stop(self) -> None:
        if self.running:
            await asyncio.wait(self.running, timeout=30)
        await self.audit.close()

    async def _on_policy_changed(self, msg: Msg) -> None:
        self.ports.passthrough.policy_changed()

    async def _on_chat_requested(self, msg: Msg) -> None:
        task = asyncio.create_task(self._turn(msg))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _turn(self, msg: Msg) -> None:
        async with self.slots:
            delivery = delivery_count(msg)
            try:
                event = ChatRequested.model_validate_json(msg.data)
            except ValidationError:
                log.error("dropping a chat.requested this runtime cannot read (schema version?)")
                await record_turn_dropped(
                    self.audit, None, reason="unreadable", delivery=delivery, content=msg.data
                )
                await msg.term()
                return
            if time.time() - event.created > self.settings.gateway_timeout_s:
                # Redelivered after its client gave up (a replica died mid-turn): running
                # it again would only spend a worker on an answer nobody reads.
                log.warning("dropping turn %s: its client has gone", event.ctx.request_id)
                await record_turn_dropped(
                    self.audit,
                    event.ctx,
                    reason="client_gone",
                    delivery=delivery,
                    model=event.model,
                )
                await msg.term()
                return
            if delivery > 1:
                await record_turn_redelivered(
                    self.audit, event.ctx, delivery=delivery, model=event.model
                )
            await self.run(event)
            # Acked only now, audit record included: a replica that dies mid-turn leaves
            # the turn to another.
            await msg.ack()

    async def run(self, event: ChatRequested) -> TurnEvent | None:
        """One turn, traced and audited; returns its outcome (None: it failed inside)."""
        last: TurnEvent | None = None
        failure: Exception | None = None
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            "turn",
            context=parent_context(event.ctx),
            kind=SpanKind.CONSUMER,
            attributes=attributes(event.ctx, **{"gen_ai.request.model": event.model}),
        ) as span:
            event.ctx = with_span(event.ctx, span)
            turn = self.ports.turn(event)
            name = agent_name(event.model)
            try:
                if name is not None and self.agents is not None:
                    last = await self.agents.chat(event, name, turn)
                else:
                    last = await run_turn(event, turn)
            except Exception as exc:
                failure = exc
                log.exception("turn %s failed", event.ctx.request_id)
                await turn.fail(INTERNAL)
        self._observe(event, turn.first, last, started)
        await record_turn(self.audit, event, last, failure)
        return last

    def _observe(
        self,
        event: ChatRequested,
        generation: Generation | None,
        last: TurnEvent | None,
        started: float,
    ) -> None:
        """A turn that generated: its time to first token from the turn's start (what its
        client waits: guardrails and retrieval included), total time and tokens."""
        if generation is None:
            return  # blocked or failed before any generation: counted by the gateway
        first = generation.first_token_at
        usage = last.usage if last is not None else None
        self.metrics.observe_generation(
            tenant=event.ctx.tenant,
            model=event.model,
            first_token_s=None if first is None else first - started,
            total_s=time.perf_counter() - started,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )


def delivery_count(msg: Msg) -> int:
    """How many times JetStream has delivered this message (1: the first time)."""
    try:
        return msg.metadata.num_delivered
    except NotJSMessageError:
        return 1


async def build(bus: Bus, broker: NatsBroker) -> Runtime:
    settings = bus.settings
    # A subject token: no dots.
    replica = f"{socket.gethostname()}-{os.getpid()}".replace(".", "_")
    deltas = ReplyRouter(bus.nc, bus.subjects.inference_deltas(replica, ""))
    generations = GenerationClient(
        bus, deltas, RouteCache(settings.route_cache_s), settings.upstream_timeout_s
    )
    ports = RuntimePorts(bus, generations, InputPassthrough(settings.guard_passthrough_s), replica)
    audit = AuditPublisher(bus.nc, bus.subjects, "runtime", outbox_dir(settings.home))
    agents = AgentRunner.at(settings.home, NatsAgentPorts(ports, audit))
    return Runtime(bus, ports, deltas, audit, agents, StageMetrics("agent_runtime"))
