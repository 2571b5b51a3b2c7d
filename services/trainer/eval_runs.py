"""Eval runs: a tenant's stored eval set run on a model and on the version that serves
its base model, the report stored and listed (`evals.*` on trainer.api, `enclave eval`,
the nightly run).

A model is a base model trainable here or one of the caller's own adapters
(`tenant/base:ft-vN`, `tenant/base:ft`; another tenant's is "does not exist"); its
answers come from the trainer's engine (greedy, seed 0), with the adapter's verified
bundle. Rubric checks are judged by the judge model the run or the eval set names,
resolved for the tenant the same way. The serving version of a base model is the
tenant's promoted adapter, else the base model; its report on the same eval set (same
digest, same judge) is reused when one is stored, else it is run too. The run's report
holds the candidate's results, pass rate per task and overall, the serving version's
summary and the deltas.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from libs.context import RequestContext
from libs.db.models import EvalRunRecord
from libs.events import EvalSetPut, EvalsRun
from services.trainer import bundle
from services.trainer.adapters.bundles import read_bundle
from services.trainer.adapters.sql import TrainerStore, ref
from services.trainer.engine import Engine
from services.trainer.evals import (
    EvalReport,
    EvalSet,
    deltas,
    parse_verdict,
    rubric_requests,
    score,
)
from services.trainer.identity import NotFound, parse_public_id, resolve

log = logging.getLogger("enclave.trainer.evals")
JUDGE_TOKENS = 8  # PASS or FAIL


class EvalNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Target:
    """What answers: `label` as the tenant names it, `key` what reports compare on (an
    adapter's digest or the base model's id)."""

    label: str
    key: str
    base_model: str
    engine: Engine
    files: Mapping[str, bytes] | None


def run_public(row: EvalRunRecord) -> dict[str, Any]:
    report = row.report or {}
    return {
        "id": row.id,
        "object": "eval.run",
        "eval_set": row.eval_set,
        "eval_set_digest": row.eval_set_digest,
        "model": row.model,
        "status": row.status,
        "trigger": row.trigger,
        "created_by": row.created_by,
        "created_at": int(row.created_at.timestamp()),
        "completed_at": int(row.completed_at.timestamp()) if row.completed_at else None,
        "pass_rate": report.get("summary", {}).get("pass_rate"),
        "tasks": report.get("summary", {}).get("tasks"),
        "serving_model": report.get("serving_model"),
        "deltas": report.get("deltas"),
        "error": row.error,
        "report": report,
    }


@dataclass
class EvalRunner:
    store: TrainerStore
    engines: Callable[[str], Engine | None]
    trusted_keys: dict[str, Ed25519PublicKey]
    audit: Callable[..., Awaitable[Any]] | None = None
    max_new_tokens: int = 32
    clock: Callable[[], int] = field(default=lambda: int(datetime.now(UTC).timestamp()))
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    # -- models, resolved for the tenant only --
    async def target(self, tenant: str, model: str) -> Target:
        if parse_public_id(model) is not None:
            rows = await self.store.adapters(tenant)
            found = resolve(model, tenant, [ref(r) for r in rows])  # NotFound: 404
            row = next(r for r in rows if r.version == found.version and r.digest == found.digest)
            files = await asyncio.to_thread(read_bundle, Path(row.bundle_path))
            verified = bundle.verify(files, self.trusted_keys)
            if verified.digest != row.digest:
                raise bundle.BundleError(f"{row.public_id}'s bundle names another digest")
            engine = await asyncio.to_thread(self.engines, row.base_model)
            if engine is None:
                raise ValueError(f"the base model {row.base_model!r} is not served here")
            return Target(found.public_id, row.digest, row.base_model, engine, files)
        engine = await asyncio.to_thread(self.engines, model)
        if engine is None:
            raise ValueError(f"the model {model!r} cannot be evaluated here")
        return Target(model, model, model, engine, None)

    async def serving_label(self, tenant: str, base_model: str) -> str:
        """The tenant's promoted adapter of `base_model` (its versioned id), else the base."""
        row = await self.store.promoted(tenant, base_model)
        return row.public_id if row is not None else base_model

    # -- answers, verdicts, report --
    async def evaluate(
        self,
        tenant: str,
        target: Target,
        eval_set: EvalSet,
        judge: str | None,
        judge_target: Target | None = None,
    ) -> EvalReport:
        ids = [item.id for item in eval_set.items]
        prompts = [[m.model_dump() for m in item.messages] for item in eval_set.items]
        got = await asyncio.to_thread(
            target.engine.generate,
            prompts,
            target.files,
            max_new_tokens=self.max_new_tokens,
            seed=0,
        )
        answers = dict(zip(ids, got, strict=True))
        verdicts: dict[str, bool | None] = {}
        asks = rubric_requests(eval_set, answers)
        judge = judge or eval_set.judge_model
        if asks and (judge or judge_target):
            jt = judge_target or await self.target(tenant, judge or "")
            said = await asyncio.to_thread(
                jt.engine.generate,
                [p for _, p in asks],
                jt.files,
                max_new_tokens=JUDGE_TOKENS,
                seed=0,
            )
            verdicts = {k: parse_verdict(t) for (k, _), t in zip(asks, said, strict=True)}
        return score(eval_set, answers, target.label, verdicts)

    # -- trainer.api --
    async def put_set(self, ctx: RequestContext, op: EvalSetPut) -> dict[str, Any]:
        try:
            eval_set = EvalSet.model_validate({**op.eval_set, "name": op.name})
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"invalid eval set: {why}") from None
        for model in {op.model, eval_set.judge_model} - {None}:
            assert model is not None
            await self.target(ctx.tenant, model)  # exists for this tenant, evaluable here
        body = eval_set.model_dump()
        row = await self.store.put_eval_set(ctx.tenant, op.name, op.model, eval_set.digest(), body)
        if self.audit is not None:
            await self.audit(
                "eval_set_stored",
                ctx,
                model=op.model,
                attrs={"eval_set": op.name, "digest": row.digest, "items": len(eval_set.items)},
            )
        return set_public(row)

    async def sets(self, tenant: str) -> dict[str, Any]:
        rows = await self.store.eval_sets(tenant)
        return {"object": "list", "data": [set_public(r) for r in rows]}

    async def run(self, ctx: RequestContext, op: EvalsRun, trigger: str = "api") -> dict[str, Any]:
        rec = await self.store.eval_set(ctx.tenant, op.eval_set)
        if rec is None:
            raise EvalNotFound(f"No eval set named {op.eval_set!r}.")
        eval_set = EvalSet.model_validate(rec.body)
        target = await self.target(ctx.tenant, op.model)
        judge = op.judge_model or eval_set.judge_model
        judge_target = await self.target(ctx.tenant, judge) if judge else None
        row = await self.store.add_eval_run(
            EvalRunRecord(
                id="evalrun-" + secrets.token_hex(12),
                tenant=ctx.tenant,
                eval_set=rec.name,
                eval_set_digest=rec.digest,
                model=target.label,
                model_key=target.key,
                status="in_progress",
                trigger=trigger,
                created_by=ctx.actor,
                report={},
                created_at=datetime.fromtimestamp(self.clock(), UTC),
            )
        )
        if self.audit is not None:
            await self.audit(
                "eval_run_created",
                ctx,
                model=target.label,
                attrs={"run_id": row.id, "eval_set": rec.name, "trigger": trigger},
            )
        work = self._complete(ctx, row, target, eval_set, judge, judge_target)
        if op.wait:
            return run_public(await work)
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return run_public(row)

    async def _complete(
        self,
        ctx: RequestContext,
        row: EvalRunRecord,
        target: Target,
        eval_set: EvalSet,
        judge: str | None,
        judge_target: Target | None,
    ) -> EvalRunRecord:
        tenant = ctx.tenant
        try:
            candidate = await self.evaluate(tenant, target, eval_set, judge, judge_target)
            serving_label = await self.serving_label(tenant, target.base_model)
            serving = await self._serving_report(
                tenant, serving_label, target, candidate, eval_set, judge, judge_target
            )
            moved = deltas(candidate, serving)
            report: dict[str, Any] = {
                "candidate": candidate.model_dump(),
                "summary": candidate.summary(),
                "serving_model": serving.model,
                "serving": serving.summary(),
                "deltas": moved,
                "judge_model": judge,
            }
            done = await self.store.finish_eval_run(row.id, "completed", report, None)
        except Exception as exc:
            log.exception("eval run %s failed", row.id)
            return await self.store.finish_eval_run(row.id, "failed", {}, str(exc)[:1900])
        if self.audit is not None:
            await self.audit(
                "eval_run_completed",
                ctx,
                model=target.label,
                attrs={
                    "run_id": row.id,
                    "eval_set": row.eval_set,
                    "pass_rate": round(candidate.pass_rate, 4),
                    "serving_model": serving.model,
                    "delta": moved["_overall"],
                },
            )
        return done

    async def _serving_report(
        self,
        tenant: str,
        serving_label: str,
        target: Target,
        candidate: EvalReport,
        eval_set: EvalSet,
        judge: str | None,
        judge_target: Target | None,
    ) -> EvalReport:
        if serving_label == target.label:
            return candidate
        serving = await self.target(tenant, serving_label)
        for prior in await self.store.eval_runs(
            tenant, model_key=serving.key, digest=eval_set.digest(), status="completed", limit=5
        ):
            if prior.report.get("judge_model") == judge and prior.report.get("candidate"):
                report = EvalReport.model_validate(prior.report["candidate"])
                report.model = serving.label
                return report
        return await self.evaluate(tenant, serving, eval_set, judge, judge_target)

    async def runs(self, tenant: str, eval_set: str | None, limit: int) -> dict[str, Any]:
        rows = await self.store.eval_runs(tenant, eval_set, limit)
        data = []
        for r in rows:
            public = run_public(r)
            public.pop("report")  # the list is the summaries; retrieve gives the results
            data.append(public)
        return {"object": "list", "data": data}

    async def retrieve(self, tenant: str, run_id: str) -> dict[str, Any]:
        row = await self.store.eval_run(tenant, run_id)
        if row is None:
            raise EvalNotFound(f"No eval run found with id {run_id!r}.")
        return run_public(row)

    # -- the nightly run: every tenant's eval sets that name a model --
    async def nightly(self, day: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for rec in await self.store.eval_sets(None):
            if rec.model is None:
                continue
            ctx = RequestContext(
                tenant=rec.tenant,
                request_id=f"nightly-evals-{day}",
                actor="trainer:nightly",
                role="admin",
            )
            try:
                label = await self.serving_label(rec.tenant, rec.model)
                op = EvalsRun(eval_set=rec.name, model=label, wait=True)
                out.append(await self.run(ctx, op, trigger="nightly"))
            except (NotFound, ValueError, OSError, EvalNotFound) as exc:
                log.error("nightly eval of %s/%s not run: %s", rec.tenant, rec.name, exc)
                out.append(
                    {
                        "eval_set": rec.name,
                        "tenant": rec.tenant,
                        "status": "skipped",
                        "error": str(exc),
                    }
                )
        return out


def set_public(row: Any) -> dict[str, Any]:
    return {
        "object": "eval.set",
        "name": row.name,
        "model": row.model,
        "digest": row.digest,
        "items": len(row.body.get("items", [])),
        "judge_model": row.body.get("judge_model"),
        "created_at": int(row.created_at.timestamp()),
        "updated_at": int(row.updated_at.timestamp()),
        "eval_set": row.body,
    }
