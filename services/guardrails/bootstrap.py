"""Builds the guardrails service: the screener's models loaded and warmed, the policy store
open, before it answers guardrails.input and guardrails.output (request/reply, one queue
group, so replicas share the load). Every verdict is published on
audit.<tenant>.guardrails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from faststream.nats import NatsBroker
from opentelemetry import trace

from libs.audit import AuditPublisher, outbox_dir
from libs.context import RequestContext
from libs.errors import ErrorInfo
from libs.events import ChatMessage, GuardrailCheck, GuardrailVerdict, PolicyReply, PolicyRequest
from libs.metrics import StageMetrics
from libs.rpc import Bus, serve, settled
from libs.settings import Settings
from libs.telemetry import setup_tracing, traced
from services.guardrails.adapters.classifier_cache import load_or_train
from services.guardrails.adapters.minilm import MiniLM
from services.guardrails.adapters.operators import PresidioOperators
from services.guardrails.adapters.policy_files import PolicyStore
from services.guardrails.adapters.presidio import PresidioPii
from services.guardrails.injection import InjectionDetector
from services.guardrails.policy import PolicyError
from services.guardrails.policy_api import handle_policy
from services.guardrails.scheduler import FairScheduler, screen_fairly
from services.guardrails.screen import MessageMemo, Screener

log = logging.getLogger("enclave.guardrails")
# How often each replica looks for changed policy documents (and says so on the bus).
POLICY_POLL_S = 0.25


def build_screener(settings: Settings) -> Screener:
    return Screener(
        PresidioPii(),
        InjectionDetector(load_or_train(settings.home / "guardrails" / "models")),
        PresidioOperators(),
        MiniLM(),
        MessageMemo(settings.guard_memo_size),
    )


def decide(
    screener: Screener, store: PolicyStore, check: GuardrailCheck, passthrough_s: float = 0.0
) -> GuardrailVerdict:
    try:
        policy = store.get(check.ctx.tenant, check.agent)
    except PolicyError as exc:
        # Fail closed: a broken or relaxing policy document never means "no policy".
        missing = exc.level == "agent" and exc.rule == "policy"
        return GuardrailVerdict(
            allowed=False,
            rule=f"policy.{exc.rule}",
            reasons=[str(exc)],
            error=ErrorInfo(
                status=400 if missing else 500,
                message=str(exc),
                code="policy_not_found" if missing else "guardrail_policy_invalid",
                param="policy" if missing else None,
            ),
        )
    verdict = screener.check(check, policy)
    verdict.policy_version = policy.version
    if check.direction == "input" and check.agent is None and not policy.checks_input:
        # Every input verdict of this tenant is "allowed, unchanged" until its policy
        # changes: the caller may skip asking (this verdict, audited, says so).
        verdict.passthrough_s = passthrough_s
    return verdict


class Guardrails:
    def __init__(
        self,
        bus: Bus,
        screener: Screener,
        store: PolicyStore,
        audit: AuditPublisher,
        metrics: StageMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.metrics = metrics or StageMetrics("guardrails")
        self.screener = screener
        self.store = store
        self.audit = audit
        self.tracer = setup_tracing(
            "guardrails", bus.settings.trace_dir, bus.settings.otlp_endpoint
        )
        self.passthrough_s = bus.settings.guard_passthrough_s
        # Checks run off the event loop, fairly across tenants, each within its budget.
        self.scheduler = FairScheduler()
        self.metrics.sample_work(self.scheduler.busy_ratio, self.scheduler.queued)
        self.pending: set[asyncio.Task[None]] = set()
        self.watcher: asyncio.Task[None] | None = None

    async def handle(self, check: GuardrailCheck) -> GuardrailVerdict:
        verdict = await screen_fairly(
            self.scheduler,
            check,
            lambda: decide(self.screener, self.store, check, self.passthrough_s),
        )
        self.metrics.guardrail_verdict(check.direction, verdict.allowed, verdict.rule)
        # The hop's span (`guardrails.<direction>`, see start()): the verdict, never a text.
        trace.get_current_span().set_attributes(
            {"enclave.verdict": "allowed" if verdict.allowed else "blocked"}
            | ({"enclave.rule": verdict.rule} if verdict.rule else {})
        )
        # After the reply, not before: the audit write is off the request's latency.
        task = asyncio.create_task(self._record(check, verdict))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return verdict

    async def _record(self, check: GuardrailCheck, verdict: GuardrailVerdict) -> None:
        # Let the reply leave first: this task was scheduled before the bus client's flush.
        await asyncio.sleep(0)
        # Counts and names only, never values; no floats (the chain's encoding is exact).
        attrs: dict[str, str | int | bool] = {
            "direction": check.direction,
            "allowed": verdict.allowed,
            "rule": verdict.rule or "",
            "agent": check.agent or "",
            "injection_score_permille": round(verdict.injection_score * 1000),
        }
        if verdict.passthrough_s:
            attrs["passthrough_ms"] = round(verdict.passthrough_s * 1000)
        for entity, count in Counter(e.type for e in verdict.entities).items():
            attrs[f"entities.{entity}"] = count
        try:
            await self.audit.emit(
                f"verdict.{check.direction}",
                check.ctx,
                adapter=check.adapter,
                policy_version=verdict.policy_version or None,
                outcome="allowed" if verdict.allowed else "blocked",
                attrs=attrs,
            )
        except Exception:
            log.exception("could not record the verdict of %s", check.ctx.request_id)

    async def _watch_policies(self) -> None:
        """Tell every runtime when a policy document changes, so that no cached passthrough
        outlives the policy that granted it."""
        seen = await asyncio.to_thread(self.store.stamp)
        while True:
            await asyncio.sleep(POLICY_POLL_S)
            now = await asyncio.to_thread(self.store.stamp)
            if now != seen:
                seen = now
                try:
                    await self.bus.nc.publish(self.bus.subjects.guardrails_policy_changed, b"")
                except Exception:
                    log.exception("could not announce a policy change")

    async def start(self) -> None:
        self.audit.start()
        s = self.bus.subjects
        # Raw subscriptions: every turn passes here at least once, and FastStream's own
        # handling of a message costs more than a screen under a policy that checks little.
        # One span per check: guardrails.input, guardrails.context, guardrails.output.
        handle = traced(self.tracer, span_name, self.handle)
        # Each check its own task: the fair scheduler, not the subscription's one-at-a-time
        # delivery, decides which tenant's check runs next.
        for subject in (s.guardrails_input, s.guardrails_output):
            await serve(
                self.bus.nc, subject, GuardrailCheck, handle, queue="guardrails", concurrent=True
            )
        # The admin API's policy documents (/v1/admin/policy): checked, written, announced.
        await serve(
            self.bus.nc, s.guardrails_policies, PolicyRequest, self.manage, queue="guardrails"
        )
        self.watcher = asyncio.create_task(self._watch_policies())

    async def manage(self, request: PolicyRequest) -> PolicyReply:
        return await handle_policy(self.store, request, self._announce)

    async def _announce(self) -> None:
        """A document changed here: every runtime drops its passthroughs now (the watcher
        says it again when it sees the file)."""
        await self.bus.nc.publish(self.bus.subjects.guardrails_policy_changed, b"")
        await settled(self.bus.nc)

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
        if self.pending:
            await asyncio.wait(self.pending, timeout=10)
        await self.audit.close()
        self.scheduler.close()


def span_name(check: GuardrailCheck) -> str:
    return f"guardrails.{check.direction}"


async def build(bus: Bus, broker: NatsBroker) -> Guardrails:
    settings = bus.settings
    screener = await asyncio.to_thread(build_screener, settings)
    store = PolicyStore(settings.home / "guardrails")
    # Warm spaCy and the classifier so that the first real request is not the slow one.
    warmup = GuardrailCheck(
        ctx=RequestContext(tenant="warmup", request_id="warmup"),
        messages=[ChatMessage(role="user", content="Hello, I am Ada Lovelace.")],
    )
    await asyncio.to_thread(screener.check, warmup, store.get("warmup"))
    audit = AuditPublisher(bus.nc, bus.subjects, "guardrails", outbox_dir(settings.home))
    return Guardrails(bus, screener, store, audit, StageMetrics("guardrails"))
