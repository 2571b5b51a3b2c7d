"""guardrails wiring: answers guardrails.input and guardrails.output (request/reply, one queue
group, so replicas share the load) and publishes every verdict on audit.<tenant>.guardrails.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from faststream import FastStream
from nats.aio.msg import Msg

from libs.audit import AuditPublisher, outbox_dir
from libs.bus import ensure_streams, event_bytes, make_broker
from libs.context import RequestContext
from libs.errors import ErrorInfo
from libs.events import ChatMessage, GuardrailCheck, GuardrailVerdict
from libs.settings import Settings
from services.guardrails.adapters.classifier_cache import load_or_train
from services.guardrails.adapters.minilm import MiniLM
from services.guardrails.adapters.operators import PresidioOperators
from services.guardrails.adapters.policy_files import PolicyStore
from services.guardrails.adapters.presidio import PresidioPii
from services.guardrails.injection import InjectionDetector
from services.guardrails.policy import PolicyError
from services.guardrails.scheduler import FairScheduler, screen_fairly
from services.guardrails.screen import Screener

log = logging.getLogger("enclave.guardrails")


def build_screener(settings: Settings) -> Screener:
    return Screener(
        PresidioPii(),
        InjectionDetector(load_or_train(settings.home / "guardrails" / "models")),
        PresidioOperators(),
        MiniLM(),
    )


# How often each replica looks for changed policy documents (and says so on the bus).
POLICY_POLL_S = 0.25


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


def build_app(settings: Settings) -> FastStream:
    broker = make_broker(settings, "guardrails")
    screener = build_screener(settings)
    store = PolicyStore(settings.home / "guardrails")
    scheduler = FairScheduler()
    subjects = settings.subjects
    pending: set[asyncio.Task[None]] = set()
    watcher: list[asyncio.Task[None]] = []
    publisher: list[AuditPublisher] = []
    # Warm spaCy and the classifier so that the first real request is not the slow one.
    screener.check(
        GuardrailCheck(
            ctx=RequestContext(tenant="warmup", request_id="warmup"),
            messages=[ChatMessage(role="user", content="Hello, I am Ada Lovelace.")],
        ),
        store.get("warmup"),
    )

    async def audit(check: GuardrailCheck, verdict: GuardrailVerdict) -> None:
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
            await publisher[0].emit(
                f"verdict.{check.direction}",
                check.ctx,
                policy_version=verdict.policy_version or None,
                outcome="allowed" if verdict.allowed else "blocked",
                attrs=attrs,
            )
        except Exception:
            log.exception("could not record the verdict of %s", check.ctx.request_id)

    async def handle(check: GuardrailCheck) -> GuardrailVerdict:
        verdict = await screen_fairly(
            scheduler, check, lambda: decide(screener, store, check, settings.guard_passthrough_s)
        )
        # After the reply, not before: the audit write is off the request's latency.
        task = asyncio.create_task(audit(check, verdict))
        pending.add(task)
        task.add_done_callback(pending.discard)
        return verdict

    async def on_check(msg: Msg) -> None:
        # Raw subscription: every turn passes here at least once, and FastStream's own
        # handling of a message costs more than a screen under a policy that checks little.
        verdict = await handle(GuardrailCheck.model_validate_json(msg.data))
        await broker.connection.publish(msg.reply, event_bytes(verdict))

    app = FastStream(broker)

    @app.after_startup
    async def _subscribe() -> None:
        for subject in (subjects.guardrails_input, subjects.guardrails_output):
            await broker.connection.subscribe(subject, queue="guardrails", cb=on_check)

    async def watch_policies() -> None:
        """Tell every runtime when a policy document changes, so that no cached passthrough
        outlives the policy that granted it."""
        seen = await asyncio.to_thread(store.stamp)
        while True:
            await asyncio.sleep(POLICY_POLL_S)
            now = await asyncio.to_thread(store.stamp)
            if now != seen:
                seen = now
                try:
                    await broker.connection.publish(subjects.guardrails_policy_changed, b"")
                except Exception:
                    log.exception("could not announce a policy change")

    @app.after_startup
    async def _watch() -> None:
        watcher.append(asyncio.create_task(watch_policies()))

    @app.on_startup
    async def _streams() -> None:
        await broker.connect()
        await ensure_streams(broker.connection, settings)
        publisher.append(
            AuditPublisher(
                broker.connection, subjects, "guardrails", outbox_dir(settings.home)
            ).start()
        )

    @app.on_shutdown
    async def _drain() -> None:
        for task in watcher:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
        if publisher:
            await publisher[0].close()
        scheduler.close()

    return app
