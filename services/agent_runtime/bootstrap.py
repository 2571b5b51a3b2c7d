"""Builds the agent runtime: everything a turn needs, constructed before the first turn.

All replicas share one durable JetStream consumer through a deliver group, so each turn
runs on exactly one replica; a message is acked only when its turn is done and its audit
record acked, so a replica that dies mid-turn leaves it to be redelivered to another.

While a turn runs, its replica tells the gateway so: at once when it takes the turn, then
every `heartbeat_s` (as a request: the gateway's answer says whether the client still
waits). A gateway that stops hearing it publishes the turn again or ends the stream with an
error; a runtime that hears the client is gone (`chat.cancel`, or its heartbeat finds the
inbox closed or no gateway at all) stops the turn, which cancels its generation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

import orjson
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError
from nats.js.api import ConsumerConfig
from opentelemetry.trace import SpanKind, Tracer
from pydantic import ValidationError

from libs.approvals import ApprovalStore
from libs.audit import (
    AuditPublisher,
    outbox_dir,
    record_external_call,
    record_turn_dropped,
    record_turn_redelivered,
)
from libs.bus import event_bytes, stream_configs
from libs.context import RUNTIME_HEADER
from libs.db.engine import make_engine
from libs.errors import ErrorInfo
from libs.events import (
    AgentResumeRequested,
    ChatRequested,
    DelegateRequested,
    ResponseCancelled,
    SkillsReply,
    SkillsRequest,
    TurnCancelled,
    TurnEvent,
    TurnLogged,
    Usage,
)
from libs.generation import AnyGeneration, GenerationClient, RouteCache
from libs.learning_optins import LearningOptIns
from libs.metrics import StageMetrics
from libs.rpc import Bus, ReplyRouter, serve, still_wanted
from libs.seccomp import build_filter
from libs.telemetry import attributes, parent_context, setup_tracing, with_span
from services.agent_runtime.adapters.agent_ports import NatsAgentPorts
from services.agent_runtime.adapters.mcp_client import McpSessions
from services.agent_runtime.adapters.sql_mcp_servers import SqlMcpServers
from services.agent_runtime.agent_runner import AgentRunner, manage_skills
from services.agent_runtime.agents import agent_name
from services.agent_runtime.passthrough import InputPassthrough
from services.agent_runtime.pipeline import Transcript, run_turn
from services.agent_runtime.ports import RuntimePorts
from services.agent_runtime.running import RunningTurns
from services.agent_runtime.turn_audit import record_turn, served_by

log = logging.getLogger("enclave.agent_runtime")
INTERNAL = ErrorInfo(
    status=500, message="The turn failed inside the runtime.", code="internal_error"
)
CANCELLED = ErrorInfo(status=499, message="The response was cancelled.", code="cancelled")
# The outcome of a turn whose client went away (never sent: nobody reads it; audited).
CLIENT_GONE = ErrorInfo(status=499, message="The client went away.", code="client_gone")
HEARTBEAT = event_bytes(TurnEvent(heartbeat=True))


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
        mcp: McpSessions | None = None,
        optins: LearningOptIns | None = None,
    ) -> None:
        self.mcp = mcp
        self.bus = bus
        # The tenants that opted in to learning from feedback: only their turns are logged.
        self.optins = optins
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
        # The turns running here: what `chat.cancel` and `responses.cancel` stop.
        self.turns = RunningTurns(remember_s=self.settings.gateway_timeout_s)

    async def start(self) -> None:
        nc, subjects = self.bus.nc, self.bus.subjects
        self.audit.start()
        await self.deltas.start()
        if self.optins is not None:
            await self.optins.watch()
        await nc.subscribe(subjects.guardrails_policy_changed, cb=self._on_policy_changed)
        await self.ports.generations.follow_models_changed()
        await nc.subscribe(subjects.responses_cancel, cb=self._on_response_cancel)
        # Every replica hears every cancel (no queue group); the one running the turn stops.
        await nc.subscribe(subjects.chat_cancel, cb=self._on_cancel)
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
            agents = self.agents

            async def skills(request: SkillsRequest) -> SkillsReply:
                return await manage_skills(agents, request)

            # The tenant's skills through the API (services/gateway/skills_routes.py).
            await serve(nc, subjects.agent_skills, SkillsRequest, skills, queue="agent_runtime")
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
        if self.agents is not None and self.agents.approvals is not None:
            # Approvers' decisions: each resumes a paused run (acked once it has ended).
            await nc.jetstream().subscribe(
                subjects.agent_resume,
                queue="agent_runtime_resume",
                durable="agent_runtime_resume",
                stream=subjects.agent_stream_name,
                cb=self._on_resume,
                manual_ack=True,
                config=ConsumerConfig(ack_wait=300, max_ack_pending=1_000),
            )

    async def _on_resume(self, msg: Msg) -> None:
        task = asyncio.create_task(self._resume(msg))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _resume(self, msg: Msg) -> None:
        assert self.agents is not None
        try:
            request = AgentResumeRequested.model_validate_json(msg.data)
        except ValidationError:
            log.error("dropping an agent.resume this runtime cannot read")
            await msg.term()
            return
        async with self.slots:
            try:
                await self.agents.resume(request)
            except Exception:
                log.exception("resuming approval %s failed", request.approval_id)
                await msg.nak(delay=5)
                return
        await msg.ack()

    async def stop(self) -> None:
        if self.running:
            await asyncio.wait(self.running, timeout=30)
        if self.mcp is not None:
            await self.mcp.close()
        if self.optins is not None:
            await self.optins.stop()
        await self.audit.close()

    async def _log_turn(self, event: ChatRequested, last: TurnEvent, t: Transcript) -> None:
        """The turn as screened, for learning from feedback: only for a tenant that opted
        in (libs/learning_optins.py; the trainer checks again); best effort."""
        logged = TurnLogged(
            ctx=event.ctx,
            completion_id=("chatcmpl-" if event.kind == "chat" else "cmpl-") + event.ctx.request_id,
            kind=event.kind,
            model=event.model,
            adapter=served_by(last),
            messages=t.messages,
            answer=t.text(),
        )
        try:
            await self.bus.nc.publish(self.bus.subjects.trainer_turns, event_bytes(logged))
        except Exception:
            log.exception("turn %s not logged", event.ctx.request_id)

    async def _on_policy_changed(self, msg: Msg) -> None:
        self.ports.passthrough.policy_changed()

    async def _on_cancel(self, msg: Msg) -> None:
        """A turn whose client went away or timed out (chat.cancel): it stops here."""
        try:
            cancel = TurnCancelled.model_validate_json(msg.data)
        except ValidationError:
            return
        if self.turns.cancel(cancel.reply_subject):
            log.info("turn %s cancelled: %s", cancel.ctx.request_id, cancel.reason)

    async def _on_response_cancel(self, msg: Msg) -> None:
        """A cancelled background response: its turn, if it runs here, stops now."""
        try:
            note = ResponseCancelled.model_validate_json(msg.data)
        except ValidationError:
            return
        if note.request_id:
            self.turns.cancel_response(note.request_id)

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
            if delivery > 1 or event.attempt > 1:
                # Redelivered by JetStream, or published again by the gateway: the replica
                # that had it died.
                await record_turn_redelivered(
                    self.audit, event.ctx, delivery=max(delivery, event.attempt), model=event.model
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
            transcript: Transcript | None = None
            if name is not None and self.agents is not None:
                work = asyncio.ensure_future(self.agents.chat(event, name, turn))
            else:
                if self.optins is not None and self.optins.opted_in(event.ctx.tenant):
                    transcript = Transcript()
                work = asyncio.ensure_future(
                    run_turn(event, turn, self.settings.turn_retries, transcript)
                )
            self.turns.add(event.reply_subject, event.ctx.request_id, work)
            beating = asyncio.create_task(self._heartbeat(event, work))
            try:
                last = await work
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not work.cancelled() or (current is not None and current.cancelling()):
                    raise  # this replica is stopping, not the client
                if self.turns.response_cancelled(event.reply_subject):
                    # Its response was cancelled (responses.cancel): the turn ends here.
                    log.info("turn %s cancelled", event.ctx.request_id)
                    last = TurnEvent(error=CANCELLED, done=True)
                    await turn.send(last)
                else:
                    last = TurnEvent(error=CLIENT_GONE, done=True)
            except Exception as exc:
                failure = exc
                log.exception("turn %s failed", event.ctx.request_id)
                await turn.fail(INTERNAL)
            finally:
                beating.cancel()
                self.turns.remove(event.reply_subject)
        self._observe(event, turn.first, last, started)
        await record_turn(self.audit, event, last, failure)
        done = last is not None and last.done and last.error is None
        if transcript is not None and transcript.messages and done and last is not None:
            await self._log_turn(event, last, transcript)
        external = turn.external_call()
        if external is not None:
            provider, pool, sent = external
            usage = last.usage if last is not None and last.usage is not None else Usage()
            await record_external_call(
                self.audit,
                event.ctx,
                provider=provider,
                pool=pool,
                model=event.model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                redactions=turn.redactions,
                sent=orjson.dumps([m.model_dump() for m in sent.messages] or sent.prompt),
            )
        return last

    async def _heartbeat(self, event: ChatRequested, work: asyncio.Task[Any]) -> None:
        """The gateway hears that this replica holds the turn (at once, then every
        `heartbeat_s`); a turn nobody waits for any more is stopped.

        A turn asked to stop (here, by `chat.cancel` or by `responses.cancel`) that still
        runs a beat later is stopped again, each beat until it ends: a cancel that lands as
        the turn's awaited answer arrives is lost inside a library's `asyncio.wait_for` on
        Python 3.11 (nats-py's request), and the turn would run on for nobody. The lost
        cancel still counts in `work.cancelling()`."""
        nc, settings = self.bus.nc, self.settings
        headers = {**event.ctx.headers(), RUNTIME_HEADER: self.ports.replica}
        try:
            await nc.publish(event.reply_subject, HEARTBEAT, headers=headers)
            while not work.done():
                await asyncio.sleep(settings.heartbeat_s)
                if work.cancelling():
                    work.cancel()
                # One beat at most for its answer (as the workers' heartbeat): a slow answer
                # must not stretch the beat past the gateway's `stream_idle_s`.
                elif not await still_wanted(
                    nc, event.reply_subject, HEARTBEAT, settings.heartbeat_s, headers
                ):
                    log.info("turn %s stopped: its client is gone", event.ctx.request_id)
                    work.cancel()
        except Exception:  # no connection now: the turn goes on, the gateway may give up
            log.warning("heartbeat of turn %s failed", event.ctx.request_id)

    def _observe(
        self,
        event: ChatRequested,
        generation: AnyGeneration | None,
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
    approvals = ApprovalStore(bus.nc, bus.subjects, settings.stream_replicas)
    # The tenants' MCP servers (SQL, written by the gateway's admin API) and the sessions
    # with them: stdio servers under the sandbox's bubblewrap profile and seccomp filter.
    mcp = McpSessions.from_settings(settings, build_filter())
    servers = SqlMcpServers(make_engine(settings.sqlalchemy_url), settings.mcp_refresh_s)
    agents = AgentRunner.at(settings.home, NatsAgentPorts(ports, audit), approvals, (servers, mcp))
    optins = LearningOptIns(bus.nc, bus.subjects, settings.stream_replicas)
    return Runtime(bus, ports, deltas, audit, agents, StageMetrics("agent_runtime"), mcp, optins)
