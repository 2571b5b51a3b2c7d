"""Fine-tuning jobs and the adapter registry in SQL; every query is scoped by tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db.engine import sessions
from libs.db.models import (
    AdapterVersion,
    EvalRunRecord,
    EvalSetRecord,
    FineTuningJobRecord,
    LearningRecord,
    LoggedTurn,
    ScheduleClaim,
    TurnFeedback,
)
from services.trainer.identity import AdapterRef, public_id
from services.trainer.jobs import FineTuningJob, JobCheckpoint, JobEvent


def _aware(t: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC)."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def ref(row: AdapterVersion) -> AdapterRef:
    return AdapterRef(row.tenant, row.base_model, row.version, row.digest, row.status)


def adapter_public(row: AdapterVersion) -> dict[str, Any]:
    """What a tenant is shown about one of its adapter versions."""
    return {
        "id": row.public_id,
        "object": "model.adapter",
        "base_model": row.base_model,
        "version": row.version,
        "digest": row.digest,
        "status": row.status,
        "status_reason": row.status_reason,
        "job_id": row.job_id,
        "trained_by": row.trained_by,
        "created_at": int(row.created_at.timestamp()),
        "eval_report": row.eval_report,
    }


class TrainerStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.session = sessions(engine)

    # -- jobs --
    async def job(self, tenant: str | None, job_id: str) -> FineTuningJobRecord | None:
        q = select(FineTuningJobRecord).where(FineTuningJobRecord.id == job_id)
        if tenant is not None:
            q = q.where(FineTuningJobRecord.tenant == tenant)
        async with self.session() as s:
            return (await s.execute(q)).scalar_one_or_none()

    async def create_job(self, job: FineTuningJob, created: JobEvent) -> bool:
        """False if a job with this id exists already (a redelivered request)."""
        row = FineTuningJobRecord(
            id=job.id,
            tenant=job.tenant,
            status=job.status,
            job=job.model_dump(mode="json"),
            events=[created.model_dump(mode="json")],
            checkpoints=[],
        )
        try:
            async with self.session() as s, s.begin():
                s.add(row)
        except IntegrityError:
            return False
        return True

    async def save_job(
        self,
        job: FineTuningJob,
        event: JobEvent | None = None,
        checkpoint: JobCheckpoint | None = None,
    ) -> None:
        async with self.session() as s, s.begin():
            row = await s.get(FineTuningJobRecord, job.id, with_for_update=True)
            if row is None:
                raise LookupError(f"no job {job.id}")
            row.status = job.status
            row.job = job.model_dump(mode="json")
            if event is not None:
                row.events = [*row.events, event.model_dump(mode="json")]
            if checkpoint is not None:
                row.checkpoints = [*row.checkpoints, checkpoint.model_dump(mode="json")]
            row.updated_at = datetime.now(UTC)

    async def jobs(self, tenant: str, limit: int = 20, after: str | None = None) -> list[Any]:
        q = select(FineTuningJobRecord).where(FineTuningJobRecord.tenant == tenant)
        if after:
            anchor = await self.job(tenant, after)
            if anchor is not None:
                q = q.where(FineTuningJobRecord.created_at < anchor.created_at)
        q = q.order_by(FineTuningJobRecord.created_at.desc()).limit(limit)
        async with self.session() as s:
            return list((await s.execute(q)).scalars().all())

    # -- adapters --
    async def adapters(
        self, tenant: str, base_model: str | None = None
    ) -> Sequence[AdapterVersion]:
        q = select(AdapterVersion).where(AdapterVersion.tenant == tenant)
        if base_model is not None:
            q = q.where(AdapterVersion.base_model == base_model)
        async with self.session() as s:
            return (await s.execute(q.order_by(AdapterVersion.version))).scalars().all()

    async def promoted(self, tenant: str, base_model: str) -> AdapterVersion | None:
        rows = [r for r in await self.adapters(tenant, base_model) if r.status == "promoted"]
        return rows[-1] if rows else None

    async def add_adapter(
        self,
        *,
        tenant: str,
        base_model: str,
        digest: str,
        job_id: str,
        trained_by: str,
        eval_report: dict[str, Any],
        meta: dict[str, Any],
        bundle_path: str,
        status: str,
        status_reason: str,
        version: int,
    ) -> AdapterVersion:
        """Insert version `version`; IntegrityError if another replica took that number."""
        row = AdapterVersion(
            tenant=tenant,
            base_model=base_model,
            version=version,
            digest=digest,
            public_id=public_id(tenant, base_model, version),
            job_id=job_id,
            trained_by=trained_by,
            eval_report=eval_report,
            meta=meta,
            bundle_path=bundle_path,
            status=status,
            status_reason=status_reason,
        )
        async with self.session() as s, s.begin():
            if status == "promoted":
                await self._demote(s, tenant, base_model, f"superseded by v{version}")
            s.add(row)
        return row

    async def next_version(self, tenant: str, base_model: str) -> int:
        async with self.session() as s:
            top = await s.scalar(
                select(func.max(AdapterVersion.version)).where(
                    AdapterVersion.tenant == tenant, AdapterVersion.base_model == base_model
                )
            )
        return int(top or 0) + 1

    async def _demote(self, s: Any, tenant: str, base_model: str, reason: str) -> None:
        rows = (
            await s.execute(
                select(AdapterVersion).where(
                    AdapterVersion.tenant == tenant,
                    AdapterVersion.base_model == base_model,
                    AdapterVersion.status == "promoted",
                )
            )
        ).scalars()
        for row in rows:
            row.status = "retired"
            row.status_reason = reason

    async def rollback(self, tenant: str, base_model: str) -> AdapterVersion | None:
        """Serve the version promoted before the current one again; None if there is none."""
        async with self.session() as s, s.begin():
            rows = (
                (
                    await s.execute(
                        select(AdapterVersion)
                        .where(
                            AdapterVersion.tenant == tenant,
                            AdapterVersion.base_model == base_model,
                        )
                        .order_by(AdapterVersion.version)
                    )
                )
                .scalars()
                .all()
            )
            current = [r for r in rows if r.status == "promoted"]
            if not current:
                return None
            top = current[-1]
            earlier = [r for r in rows if r.status == "retired" and r.version < top.version]
            if not earlier:
                return None
            back = earlier[-1]
            top.status, top.status_reason = "retired", f"rolled back to v{back.version}"
            back.status, back.status_reason = "promoted", f"rollback from v{top.version}"
            return back

    # -- eval sets and eval runs --
    async def put_eval_set(
        self, tenant: str, name: str, model: str | None, digest: str, body: dict[str, Any]
    ) -> EvalSetRecord:
        async with self.session() as s, s.begin():
            row = await s.get(EvalSetRecord, (tenant, name), with_for_update=True)
            now = datetime.now(UTC)
            if row is None:
                row = EvalSetRecord(tenant=tenant, name=name, created_at=now)
                s.add(row)
            row.model, row.digest, row.body, row.updated_at = model, digest, body, now
        return row

    async def eval_set(self, tenant: str, name: str) -> EvalSetRecord | None:
        async with self.session() as s:
            return await s.get(EvalSetRecord, (tenant, name))

    async def eval_sets(self, tenant: str | None = None) -> Sequence[EvalSetRecord]:
        """A tenant's eval sets; every tenant's with None (the nightly run)."""
        q = select(EvalSetRecord).order_by(EvalSetRecord.tenant, EvalSetRecord.name)
        if tenant is not None:
            q = q.where(EvalSetRecord.tenant == tenant)
        async with self.session() as s:
            return (await s.execute(q)).scalars().all()

    async def add_eval_run(self, row: EvalRunRecord) -> EvalRunRecord:
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def finish_eval_run(
        self, run_id: str, status: str, report: dict[str, Any], error: str | None
    ) -> EvalRunRecord:
        async with self.session() as s, s.begin():
            row = await s.get(EvalRunRecord, run_id, with_for_update=True)
            if row is None:
                raise LookupError(f"no eval run {run_id}")
            row.status, row.report, row.error = status, report, error
            row.completed_at = datetime.now(UTC)
        return row

    async def eval_run(self, tenant: str, run_id: str) -> EvalRunRecord | None:
        q = select(EvalRunRecord).where(EvalRunRecord.id == run_id, EvalRunRecord.tenant == tenant)
        async with self.session() as s:
            return (await s.execute(q)).scalar_one_or_none()

    async def eval_runs(
        self,
        tenant: str,
        eval_set: str | None = None,
        limit: int = 20,
        *,
        model_key: str | None = None,
        digest: str | None = None,
        status: str | None = None,
    ) -> Sequence[EvalRunRecord]:
        """A tenant's eval runs, newest first."""
        q = select(EvalRunRecord).where(EvalRunRecord.tenant == tenant)
        if eval_set is not None:
            q = q.where(EvalRunRecord.eval_set == eval_set)
        if model_key is not None:
            q = q.where(EvalRunRecord.model_key == model_key)
        if digest is not None:
            q = q.where(EvalRunRecord.eval_set_digest == digest)
        if status is not None:
            q = q.where(EvalRunRecord.status == status)
        q = q.order_by(EvalRunRecord.created_at.desc(), EvalRunRecord.id).limit(limit)
        async with self.session() as s:
            return (await s.execute(q)).scalars().all()

    # -- scheduled jobs: one replica claims each job's day --
    async def claim(self, job: str, day: str) -> bool:
        """True for the first caller of (job, day), False for every later one."""
        try:
            async with self.session() as s, s.begin():
                s.add(ScheduleClaim(job=job, day=day, claimed_at=datetime.now(UTC)))
        except IntegrityError:
            return False
        return True

    # -- learning from feedback: settings, logged turns, ratings --
    async def learning(self, tenant: str) -> LearningRecord | None:
        async with self.session() as s:
            return await s.get(LearningRecord, tenant)

    async def learning_all(self) -> Sequence[LearningRecord]:
        async with self.session() as s:
            return (await s.execute(select(LearningRecord))).scalars().all()

    async def put_learning(
        self,
        tenant: str,
        settings: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
    ) -> LearningRecord:
        async with self.session() as s, s.begin():
            row = await s.get(LearningRecord, tenant, with_for_update=True)
            if row is None:
                row = LearningRecord(tenant=tenant, settings={}, state={})
                s.add(row)
            if settings is not None:
                row.settings = settings
            if state is not None:
                row.state = state
            row.updated_at = datetime.now(UTC)
        return row

    async def add_turn(self, row: LoggedTurn) -> bool:
        """False if that completion was logged already (a redelivery)."""
        try:
            async with self.session() as s, s.begin():
                s.add(row)
        except IntegrityError:
            return False
        return True

    async def turn(self, tenant: str, completion_id: str) -> LoggedTurn | None:
        async with self.session() as s:
            return await s.get(LoggedTurn, (tenant, completion_id))

    async def add_feedback(self, row: TurnFeedback) -> TurnFeedback:
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def rated_turns(self, tenant: str) -> list[tuple[LoggedTurn, TurnFeedback]]:
        """The tenant's logged turns with their latest rating (unrated ones left out)."""
        async with self.session() as s:
            ratings = (
                (
                    await s.execute(
                        select(TurnFeedback)
                        .where(TurnFeedback.tenant == tenant)
                        .order_by(TurnFeedback.created_at, TurnFeedback.id)
                    )
                )
                .scalars()
                .all()
            )
            latest = {r.completion_id: r for r in ratings}
            turns = (
                (
                    await s.execute(
                        select(LoggedTurn)
                        .where(LoggedTurn.tenant == tenant)
                        .order_by(LoggedTurn.created_at)
                    )
                )
                .scalars()
                .all()
            )
        return [(t, latest[t.completion_id]) for t in turns if t.completion_id in latest]

    async def feedback_since(self, tenant: str, since: datetime | None) -> int:
        q = select(func.count()).select_from(TurnFeedback).where(TurnFeedback.tenant == tenant)
        if since is not None:
            q = q.where(TurnFeedback.created_at > since)
        async with self.session() as s:
            return int(await s.scalar(q) or 0)

    async def tenants_with_turns(self) -> list[str]:
        async with self.session() as s:
            a = (await s.execute(select(LoggedTurn.tenant).distinct())).scalars().all()
            b = (await s.execute(select(TurnFeedback.tenant).distinct())).scalars().all()
        return sorted({*a, *b})

    async def purge(self, tenant: str, before: datetime) -> dict[str, Any]:
        """Destroy the tenant's turns and ratings older than `before` (and the ratings of
        the turns destroyed): how many, and the range of their times."""
        async with self.session() as s, s.begin():
            old = (
                await s.execute(
                    select(LoggedTurn.completion_id, LoggedTurn.created_at).where(
                        LoggedTurn.tenant == tenant, LoggedTurn.created_at < before
                    )
                )
            ).all()
            ids = [r[0] for r in old]
            rated = (
                (
                    await s.execute(
                        select(TurnFeedback.created_at).where(
                            TurnFeedback.tenant == tenant,
                            (TurnFeedback.created_at < before)
                            | TurnFeedback.completion_id.in_(ids),
                        )
                    )
                )
                .scalars()
                .all()
            )
            await s.execute(
                delete(TurnFeedback).where(
                    TurnFeedback.tenant == tenant,
                    (TurnFeedback.created_at < before) | TurnFeedback.completion_id.in_(ids),
                )
            )
            await s.execute(
                delete(LoggedTurn).where(
                    LoggedTurn.tenant == tenant, LoggedTurn.created_at < before
                )
            )
        times = [_aware(r[1]) for r in old] + [_aware(t) for t in rated]
        return {
            "turns": len(ids),
            "feedback": len(rated),
            "oldest": min(times).isoformat() if times else None,
            "newest": max(times).isoformat() if times else None,
        }

    async def delete_tenant(self, tenant: str) -> dict[str, int]:
        """Erase the tenant's jobs, adapter versions, eval sets and eval runs (the
        tenant's erasure)."""
        async with sessions(self.engine)() as s, s.begin():
            await s.execute(delete(EvalRunRecord).where(EvalRunRecord.tenant == tenant))
            await s.execute(delete(TurnFeedback).where(TurnFeedback.tenant == tenant))
            await s.execute(delete(LoggedTurn).where(LoggedTurn.tenant == tenant))
            await s.execute(delete(LearningRecord).where(LearningRecord.tenant == tenant))
            await s.execute(delete(EvalSetRecord).where(EvalSetRecord.tenant == tenant))
            jobs = await s.execute(
                delete(FineTuningJobRecord).where(FineTuningJobRecord.tenant == tenant)
            )
            adapters = await s.execute(
                delete(AdapterVersion).where(AdapterVersion.tenant == tenant)
            )
        return {
            "jobs": int(jobs.rowcount),  # type: ignore[attr-defined]
            "adapters": int(adapters.rowcount),  # type: ignore[attr-defined]
        }
