"""Learning from feedback (opt in per tenant): turns logged as screened, ratings of them,
their destruction past retention, and the scheduled learning job through the eval gate.

- `log_turn`: a `TurnLogged` from the runtime is kept only for a tenant that opted in.
- `rate` (`feedback.create`): a rating of one of the tenant's logged completions; another
  tenant's completion id, or one never logged, is a 404; a tenant that did not opt in
  gets a 403 saying how to opt in. Stored and audited (`feedback_recorded`).
- `configure` / `settings` (`learning.configure` / `learning.get`): admin only to change,
  audited (`learning_configured`).
- `purge` (daily): every tenant's turns and ratings past its retention are destroyed,
  audited per tenant as `training_data_destroyed` (counts and the range of their times).
- `learn` (daily): for a tenant that opted in and named a base model and an eval set,
  the training set from its rated turns (learning.py), submitted as a fine-tuning job
  (`jobs.create`'s path, with the eval set): the job's eval gate promotes the adapter
  only if it does not regress, or keeps the old one and says why (the adapter's
  `status_reason`). Why a job was or was not submitted is kept in the tenant's state
  (`learning.get`) and audited (`learning_job_submitted`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from libs.context import RequestContext
from libs.db.models import LoggedTurn, TurnFeedback
from libs.errors import EnclaveError
from libs.events import (
    FeedbackCreate,
    JobsCreate,
    LearningConfigure,
    TrainerReply,
    TurnLogged,
)
from services.trainer import jobs
from services.trainer.adapters.sql import TrainerStore
from services.trainer.learning import LearningSettings, Rated, cutoff, learning_due, training_set

log = logging.getLogger("enclave.trainer.feedback")
SETTINGS_TTL_S = 30.0  # how long a replica trusts its copy of a tenant's opt-in
ADMINS = frozenset({"admin", "platform_operator"})

Submit = Callable[[RequestContext, JobsCreate], Awaitable[TrainerReply]]
# (tenant, opted in): what the runtimes are told (libs/learning_optins.py).
OptIn = Callable[[str, bool], Awaitable[None]]


@dataclass
class FeedbackService:
    store: TrainerStore
    submit: Submit
    audit: Callable[..., Awaitable[Any]] | None = None
    clock: Callable[[], int] = field(default=lambda: int(time.time()))
    cache: dict[str, tuple[float, LearningSettings]] = field(default_factory=dict)
    optins: OptIn | None = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def settings(self, tenant: str, fresh: bool = False) -> LearningSettings:
        hit = self.cache.get(tenant)
        if hit is not None and not fresh and time.monotonic() - hit[0] < SETTINGS_TTL_S:
            return hit[1]
        row = await self.store.learning(tenant)
        got = LearningSettings.model_validate(row.settings if row else {})
        self.cache[tenant] = (time.monotonic(), got)
        return got

    async def announce_optins(self) -> None:
        """Every tenant's stored opt-in, told to the runtimes (at start: the bucket
        agrees with SQL again after a loss or a change made while no trainer ran)."""
        if self.optins is None:
            return
        for row in await self.store.learning_all():
            settings = LearningSettings.model_validate(row.settings or {})
            await self.optins(row.tenant, settings.feedback)

    # -- the runtime's turns --
    async def log_turn(self, turn: TurnLogged) -> bool:
        """Kept (True) only for a tenant that opted in."""
        if not (await self.settings(turn.ctx.tenant)).feedback:
            return False
        return await self.store.add_turn(
            LoggedTurn(
                tenant=turn.ctx.tenant,
                completion_id=turn.completion_id,
                kind=turn.kind,
                model=turn.model,
                adapter=turn.adapter,
                messages=turn.messages,
                answer=turn.answer,
                created_at=datetime.fromtimestamp(turn.created_at, UTC),
            )
        )

    # -- trainer.api --
    async def rate(self, ctx: RequestContext, op: FeedbackCreate) -> dict[str, Any]:
        if not (await self.settings(ctx.tenant, fresh=True)).feedback:
            raise EnclaveError(
                403,
                "Learning from feedback is off for this tenant: an admin turns it on with "
                'PUT /v1/fine_tuning/learning {"feedback": true}.',
                "feedback_disabled",
            )
        turn = await self.store.turn(ctx.tenant, op.completion_id)
        if turn is None:
            raise EnclaveError(
                404, f"No completion found with id {op.completion_id!r}.", "not_found"
            )
        row = await self.store.add_feedback(
            TurnFeedback(
                tenant=ctx.tenant,
                completion_id=op.completion_id,
                rating=op.rating,
                correction=op.correction,
                actor=ctx.actor,
                created_at=self.now(),
            )
        )
        if self.audit is not None:
            await self.audit(
                "feedback_recorded",
                ctx,
                model=turn.model,
                adapter=turn.adapter,
                attrs={
                    "completion_id": op.completion_id,
                    "rating": op.rating,
                    "corrected": op.correction is not None,
                },
            )
        return {
            "object": "chat.completion.feedback",
            "id": f"fb-{row.id}",
            "completion_id": op.completion_id,
            "rating": op.rating,
            "correction": op.correction,
            "created_at": int(row.created_at.timestamp()),
        }

    async def describe(self, tenant: str) -> dict[str, Any]:
        row = await self.store.learning(tenant)
        settings = LearningSettings.model_validate(row.settings if row else {})
        return {
            "object": "fine_tuning.learning",
            **settings.model_dump(),
            "state": row.state if row else {},
        }

    async def configure(self, ctx: RequestContext, op: LearningConfigure) -> dict[str, Any]:
        if ctx.role not in ADMINS:
            raise EnclaveError(
                403,
                "Only a tenant admin may change learning from feedback.",
                "insufficient_permissions",
            )
        row = await self.store.learning(ctx.tenant)
        current = LearningSettings.model_validate(row.settings if row else {})
        changes = op.model_dump(exclude={"op"}, exclude_none=True)
        new = LearningSettings.model_validate({**current.model_dump(), **changes})
        try:
            jobs.Hyperparameters.model_validate(new.hyperparameters)
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise EnclaveError(
                400, f"invalid hyperparameters: {why}", "invalid_value", "hyperparameters"
            ) from None
        if new.eval_set and await self.store.eval_set(ctx.tenant, new.eval_set) is None:
            raise EnclaveError(
                400, f"No eval set named {new.eval_set!r}.", "invalid_value", "eval_set"
            )
        await self.store.put_learning(ctx.tenant, settings=new.model_dump())
        self.cache[ctx.tenant] = (time.monotonic(), new)
        if self.optins is not None:
            await self.optins(ctx.tenant, new.feedback)
        if self.audit is not None:
            await self.audit("learning_configured", ctx, attrs=new.model_dump())
        return await self.describe(ctx.tenant)

    # -- daily jobs --
    async def purge(self) -> list[dict[str, Any]]:
        """Destroy what is past each tenant's retention; one audited record per tenant
        that had any."""
        now = self.now()
        out = []
        for tenant in await self.store.tenants_with_turns():
            settings = await self.settings(tenant, fresh=True)
            before = cutoff(now, settings.retention_days)
            gone = await self.store.purge(tenant, before)
            if not gone["turns"] and not gone["feedback"]:
                continue
            record = {
                "tenant": tenant,
                "retention_days": settings.retention_days,
                "before": before.isoformat(),
                **gone,
            }
            out.append(record)
            if self.audit is not None:
                ctx = RequestContext(
                    tenant=tenant,
                    request_id="retention-" + now.date().isoformat(),
                    actor="trainer:retention",
                    role="admin",
                )
                await self.audit(
                    "training_data_destroyed",
                    ctx,
                    attrs={k: v for k, v in record.items() if k != "tenant"},
                )
        return out

    async def learn(self) -> list[dict[str, Any]]:
        """The learning job of every tenant that opted in, or why not."""
        now = self.now()
        out = []
        for row in await self.store.learning_all():
            settings = LearningSettings.model_validate(row.settings)
            if not settings.feedback:
                continue
            out.append(await self._learn_one(row.tenant, settings, dict(row.state or {}), now))
        return out

    async def _learn_one(
        self, tenant: str, settings: LearningSettings, state: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        since = state.get("last_rating_at")
        new = await self.store.feedback_since(
            tenant, datetime.fromisoformat(since) if since else None
        )
        rated = [
            Rated(t.completion_id, t.messages, t.answer, f.rating, f.correction)  # type: ignore[arg-type]
            for t, f in await self.store.rated_turns(tenant)
        ]
        data, counts = training_set(rated)
        due, why = learning_due(settings, counts["up"] + counts["corrected"], new)
        eval_set = (
            await self.store.eval_set(tenant, settings.eval_set) if settings.eval_set else None
        )
        if due and eval_set is None:
            due, why = False, f"the eval set {settings.eval_set!r} no longer exists"
        result: dict[str, Any] = {"tenant": tenant, "submitted": False, "reason": why, **counts}
        ctx = RequestContext(
            tenant=tenant,
            request_id="learning-" + now.date().isoformat(),
            actor="trainer:learning",
            role="admin",
        )
        if due:
            assert settings.base_model is not None and eval_set is not None
            reply = await self.submit(
                ctx,
                JobsCreate(
                    model=settings.base_model,
                    training_file=f"feedback-{now.date().isoformat()}",
                    training_data=data,
                    hyperparameters=settings.hyperparameters,
                    seed=0,  # the same rated turns train the same adapter
                    suffix="feedback",
                    metadata={
                        "source": "feedback",
                        "examples": str(counts["up"] + counts["corrected"]),
                    },
                    eval_set=eval_set.body,
                ),
            )
            if reply.error is not None:
                result["reason"] = f"not submitted: {reply.error.message}"
            else:
                result.update(submitted=True, job_id=reply.body["id"])
                state["last_job_id"] = reply.body["id"]
                state["last_rating_at"] = now.isoformat()
        state["last_decision"] = {k: v for k, v in result.items() if k != "tenant"}
        state["last_decision_at"] = now.isoformat()
        await self.store.put_learning(tenant, state=state)
        if self.audit is not None:
            await self.audit(
                "learning_job_submitted" if result["submitted"] else "learning_skipped",
                ctx,
                model=settings.base_model,
                attrs={k: v for k, v in result.items() if k != "tenant"},
            )
        return result
