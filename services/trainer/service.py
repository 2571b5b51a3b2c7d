"""The trainer's handlers: a fine-tuning job in, status events and an adapter version out.

`TrainerService.run_job` takes one `FineTuningJobRequested` through the job's states:
validate the files (errors name the line), train the LoRA on the engine (in a thread;
progress comes back as metrics events and a checkpoint per epoch), evaluate, sign the
bundle, register the version and, when the job brought an eval set, promote it only if
the eval gate finds no regression against the version that serves now. Every change of
the job is stored first and then published as a `FineTuningJobStatus`.

`api` answers the read side (jobs, events, checkpoints, adapters, resolve) and cancel,
always within the caller's tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from libs.context import RequestContext
from libs.errors import EnclaveError, ErrorInfo
from libs.events import (
    AdapterResolve,
    AdapterRollback,
    AdaptersList,
    EvalRetrieve,
    EvalSetPut,
    EvalSetsList,
    EvalsList,
    EvalsRun,
    FeedbackCreate,
    FineTuningCancel,
    FineTuningJobRequested,
    FineTuningJobStatus,
    JobOp,
    JobsCreate,
    JobsList,
    LearningConfigure,
    LearningGet,
    ModelsChanged,
    TenantErase,
    TrainerReply,
    TrainerRequest,
)
from services.trainer import bundle, jobs
from services.trainer.adapters.bundles import BundleDir, read_bundle
from services.trainer.adapters.sql import TrainerStore, adapter_public, ref
from services.trainer.engine import Cancelled, Engine, TrainResult, TrainSettings
from services.trainer.eval_runs import EvalNotFound, EvalRunner, Target
from services.trainer.evals import EvalReport, EvalSet, GateDecision, gate
from services.trainer.feedback import FeedbackService, OptIn
from services.trainer.identity import NotFound, public_id, resolve
from services.trainer.schedule import Daily, due
from services.trainer.training_file import (
    Example,
    TrainingFileError,
    parse_training_file,
    split_held_out,
)

log = logging.getLogger("enclave.trainer")
SAMPLES = 3


Publish = Callable[[FineTuningJobStatus], Awaitable[None]]
Audit = Callable[..., Awaitable[Any]]
Enqueue = Callable[[FineTuningJobRequested], Awaitable[None]]
Broadcast = Callable[[FineTuningCancel], Awaitable[None]]
Announce = Callable[[ModelsChanged], Awaitable[None]]


class JobFailed(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = jobs.JobError(code=code, message=message, param=param)


def _prompt(example: Example) -> list[dict[str, str]]:
    """The conversation up to its last learned assistant message."""
    last = max(i for i, m in enumerate(example.messages) if m.role == "assistant")
    return [{"role": m.role, "content": m.content} for m in example.messages[:last]]


ERASERS = frozenset({"platform_operator"})  # libs.rbac: manage_tenant


@dataclass
class TrainerService:
    store: TrainerStore
    engines: Callable[[str], Engine | None]  # base model id -> its engine (None: not trainable)
    bundles: BundleDir
    signing_key: Ed25519PrivateKey
    trusted_keys: dict[str, Ed25519PublicKey]
    publish: Publish
    audit: Audit | None = None
    # jobs.create puts the stored job on the JetStream work queue (trainer.jobs).
    enqueue: Enqueue | None = None
    # jobs.cancel of a job that another replica runs: broadcast on trainer.cancel.
    broadcast_cancel: Broadcast | None = None
    # Promotions and rollbacks: `models.changed`, so routes cached anywhere end now.
    announce: Announce | None = None
    # Which base models may be fine-tuned here (None: any; an unknown one fails the job).
    trainable: Callable[[str], bool] | None = None
    target_steps: int = jobs.AUTO_TARGET_STEPS
    max_new_tokens: int = 32  # for sample answers and eval answers
    clock: Callable[[], int] = field(default=lambda: int(time.time()))
    running: dict[str, threading.Event] = field(default_factory=dict)
    # Daily jobs (services/trainer/schedule.py): the UTC hour each is due from.
    nightly_hour: int = 2
    done: set[tuple[str, str]] = field(default_factory=set)
    # Tells the runtimes which tenants opted in to learning from feedback (a KV bucket).
    optins: OptIn | None = None

    def __post_init__(self) -> None:
        self.evals = EvalRunner(
            store=self.store,
            engines=self.engines,
            trusted_keys=self.trusted_keys,
            audit=self.audit,
            max_new_tokens=self.max_new_tokens,
            clock=self.clock,
        )
        self.feedback = FeedbackService(
            store=self.store,
            submit=self._create,
            audit=self.audit,
            clock=self.clock,
            optins=self.optins,
        )

    # -- daily jobs, run by the trainer's ticker --
    def daily_jobs(self) -> list[Daily]:
        # Retention first (any hour: nothing outlives it by more than a day), then the
        # learning job (its adapter is gated), then the nightly evals.
        return [
            Daily("retention.purge", 0),
            Daily("learning.nightly", self.nightly_hour),
            Daily("evals.nightly", self.nightly_hour),
        ]

    async def tick(self) -> dict[str, Any]:
        """Run the daily jobs due now that no replica claimed yet; what each did."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        out: dict[str, Any] = {}
        for job, day in due(self.daily_jobs(), now, self.done):
            self.done.add((job, day))
            if not await self.store.claim(job, day):
                continue  # another replica runs it today
            try:
                if job == "evals.nightly":
                    out[job] = await self.evals.nightly(day)
                elif job == "retention.purge":
                    out[job] = await self.feedback.purge()
                elif job == "learning.nightly":
                    out[job] = await self.feedback.learn()
            except Exception:
                log.exception("daily job %s of %s failed", job, day)
        return out

    # -- the job --
    @staticmethod
    def _new(req: FineTuningJobRequested) -> tuple[jobs.FineTuningJob, jobs.JobEvent]:
        return jobs.new_job(
            tenant=req.ctx.tenant,
            model=req.model,
            training_file=req.training_file,
            validation_file=req.validation_file,
            now=req.created_at,
            hyperparameters=jobs.Hyperparameters.model_validate(req.hyperparameters or {}),
            seed=req.seed,
            suffix=req.suffix,
            trained_by=req.ctx.actor,
            metadata=req.metadata,
            job_id=req.job_id,
        )

    async def _store_new(self, req: FineTuningJobRequested) -> jobs.FineTuningJob | None:
        """The job stored in `validating_files`; None if its id exists already."""
        job, created = self._new(req)
        if not await self.store.create_job(job, created):
            return None
        await self._emit(job, created)
        await self._audit("fine_tune_created", req, model=req.model, attrs={"job_id": job.id})
        return job

    async def run_job(self, req: FineTuningJobRequested) -> jobs.FineTuningJob:
        tenant = req.ctx.tenant
        stored = await self._store_new(req)
        if stored is not None:
            job = stored
        else:
            row = await self.store.job(tenant, req.job_id)
            if row is None:
                raise LookupError(f"job {req.job_id} belongs to another tenant")
            job = jobs.FineTuningJob.model_validate(row.job)
            if job.terminal:
                return job  # a redelivered request of a finished job: nothing to do
        cancel = self.running.setdefault(job.id, threading.Event())
        try:
            return await self._run(job, req, cancel)
        finally:
            self.running.pop(job.id, None)

    async def _run(
        self, job: jobs.FineTuningJob, req: FineTuningJobRequested, cancel: threading.Event
    ) -> jobs.FineTuningJob:
        try:
            train, held, eval_set, engine = await self._validate(req)
            if job.status == "validating_files":
                job = await self._move(job, "queued")
            if job.status == "queued":
                job = await self._move(job, "running")
            if cancel.is_set():
                raise Cancelled()
            hp = jobs.resolve_hyperparameters(job.hyperparameters, len(train), self.target_steps)
            result = await self._train(job, engine, train, held, hp, cancel)
            adapter = await self._register(job, req, engine, hp, result, held or train, eval_set)
        except Cancelled:
            return await self._move(job, "cancelled")
        except JobFailed as exc:
            return await self._move(job, "failed", error=exc.error)
        except Exception as exc:
            log.exception("fine-tuning job %s failed", job.id)
            err = jobs.JobError(code="training_failed", message=f"training failed: {exc}")
            return await self._move(job, "failed", error=err)
        done = await self._move(
            job,
            "succeeded",
            fine_tuned_model=adapter["id"],
            trained_tokens=result.trained_tokens,
            adapter=adapter,
        )
        await self._audit(
            "adapter_created",
            req,
            model=job.model,
            adapter=adapter["digest"],
            attrs={"job_id": job.id, "public_id": adapter["id"], "status": adapter["status"]},
        )
        return done

    async def _validate(
        self, req: FineTuningJobRequested
    ) -> tuple[list[Example], list[Example], EvalSet | None, Engine]:
        try:
            train = parse_training_file(req.training_data)
        except TrainingFileError as exc:
            raise JobFailed("invalid_training_file", str(exc), "training_file") from exc
        held: list[Example] = []
        if req.validation_data:
            try:
                held = parse_training_file(req.validation_data)
            except TrainingFileError as exc:
                raise JobFailed("invalid_validation_file", str(exc), "validation_file") from exc
        elif len(train) >= 5:
            train, held = split_held_out(train)
        eval_set = None
        if req.eval_set is not None:
            try:
                eval_set = EvalSet.model_validate(req.eval_set)
            except ValidationError as exc:
                raise JobFailed("invalid_eval_set", str(exc.errors()[:3]), "eval_set") from exc
        # The first job of a base model loads it (seconds): off the event loop.
        engine = await asyncio.to_thread(self.engines, req.model)
        if engine is None:
            raise JobFailed(
                "model_not_available",
                f"the model {req.model!r} cannot be fine-tuned here",
                "model",
            )
        return train, held, eval_set, engine

    async def _train(
        self,
        job: jobs.FineTuningJob,
        engine: Engine,
        train: list[Example],
        held: list[Example],
        hp: jobs.Hyperparameters,
        cancel: threading.Event,
    ) -> TrainResult:
        loop = asyncio.get_running_loop()
        assert isinstance(hp.batch_size, int) and isinstance(hp.n_epochs, int)
        per_epoch = -(-len(train) // hp.batch_size)
        epoch_losses: list[float] = []
        progress: list[asyncio.Future[None]] = []

        def on_step(step: int, total: int, loss: float) -> None:
            epoch_losses.append(loss)
            if step % per_epoch == 0 or step == total:
                mean = sum(epoch_losses) / len(epoch_losses)
                epoch_losses.clear()
                coro = self._progress(job, step, total, mean)
                progress.append(asyncio.run_coroutine_threadsafe(coro, loop))  # type: ignore[arg-type]

        assert isinstance(hp.learning_rate_multiplier, float)
        cfg = TrainSettings(
            epochs=hp.n_epochs,
            batch_size=hp.batch_size,
            learning_rate=jobs.BASE_LEARNING_RATE * hp.learning_rate_multiplier,
            seed=job.seed,
        )
        try:
            return await asyncio.to_thread(
                engine.train, train, held, cfg, on_step=on_step, cancelled=cancel
            )
        finally:
            for fut in progress:
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(fut)

    async def _progress(self, job: jobs.FineTuningJob, step: int, total: int, loss: float) -> None:
        now = self.clock()
        metrics = {"train_loss": round(loss, 6)}
        ev = jobs.event(
            now,
            f"Step {step}/{total}: training loss={loss:.4f}",
            data={"step": step, "total_steps": total, **metrics},
            metrics=True,
        )
        cp = jobs.checkpoint(job, now, step, metrics, f"{job.model}:{job.id}")
        await self.store.save_job(job, ev, cp)
        await self._emit(job, ev)

    async def _register(
        self,
        job: jobs.FineTuningJob,
        req: FineTuningJobRequested,
        engine: Engine,
        hp: jobs.Hyperparameters,
        result: TrainResult,
        samples_from: list[Example],
        eval_set: EvalSet | None,
    ) -> dict[str, Any]:
        tenant = job.tenant
        prompts = [_prompt(e) for e in samples_from[:SAMPLES]]
        limit = self.max_new_tokens
        base_answers = await asyncio.to_thread(
            engine.generate, prompts, max_new_tokens=limit, seed=job.seed
        )
        tuned = await asyncio.to_thread(
            engine.generate, prompts, result.adapter_files, max_new_tokens=limit, seed=job.seed
        )
        report: dict[str, Any] = {
            "held_out_loss": {
                "before": result.loss_before,
                "after": result.loss_after,
                "examples": len(samples_from) if result.loss_before is not None else 0,
            },
            "training": {
                "steps": result.steps,
                "epochs": hp.n_epochs,
                "batch_size": hp.batch_size,
                "learning_rate": jobs.BASE_LEARNING_RATE * float(hp.learning_rate_multiplier),
                "trained_tokens": result.trained_tokens,
                "seconds": round(result.seconds, 2),
                "final_train_loss": result.train_losses[-1] if result.train_losses else None,
            },
            "samples": [
                {"messages": p, "base": b, "adapter": a, "differs": a != b}
                for p, b, a in zip(prompts, base_answers, tuned, strict=True)
            ],
            "evals": None,
        }
        status, reason = "ready", "no eval set: not promoted automatically"
        if eval_set is not None:
            decision, evals = await self._gate(job, engine, eval_set, result.adapter_files)
            report["evals"] = evals
            status = "promoted" if decision.promote else "refused"
            reason = "; ".join(decision.reasons)
        previous = await self.store.promoted(tenant, job.model) if status == "promoted" else None
        for attempt in range(5):
            version = await self.store.next_version(tenant, job.model)
            pid = public_id(tenant, job.model, version)
            metadata = {
                "tenant": tenant,
                "base_model": job.model,
                "version": version,
                "public_id": pid,
                "job_id": job.id,
                "trained_by": job.trained_by,
                "training_file": job.training_file,
                "validation_file": job.validation_file,
                "seed": job.seed,
                "hyperparameters": hp.model_dump(),
                "created_at": self.clock(),
            }
            files = bundle.build(result.adapter_files, report, metadata, self.signing_key)
            verified = bundle.verify(files, self.trusted_keys)  # what a worker will check
            path = self.bundles.write(tenant, verified.digest, files)
            try:
                row = await self.store.add_adapter(
                    tenant=tenant,
                    base_model=job.model,
                    digest=verified.digest,
                    job_id=job.id,
                    trained_by=job.trained_by,
                    eval_report=report,
                    meta=metadata,
                    bundle_path=str(path),
                    status=status,
                    status_reason=reason,
                    version=version,
                )
            except IntegrityError:
                log.info("version %s of %s taken (attempt %s); next", version, pid, attempt)
                continue
            if status == "promoted":
                await self.changed("promoted", row, previous.digest if previous else None)
            return adapter_public(row)
        raise RuntimeError("could not allocate an adapter version")

    async def _gate(
        self,
        job: jobs.FineTuningJob,
        engine: Engine,
        eval_set: EvalSet,
        adapter_files: Mapping[str, bytes],
    ) -> tuple[GateDecision, dict[str, Any]]:
        judge: Target | None = None
        if eval_set.judge_model:
            try:
                judge = await self.evals.target(job.tenant, eval_set.judge_model)
            except (NotFound, ValueError, OSError) as exc:
                why = f"not promoted: the judge model cannot be used: {exc}"
                decision = GateDecision(False, [why])
                return decision, {"eval_set": eval_set.digest(), "gate": decision.as_dict()}

        async def run(files: Mapping[str, bytes] | None, label: str) -> EvalReport:
            target = Target(label, label, job.model, engine, files)
            return await self.evals.evaluate(job.tenant, target, eval_set, None, judge)

        candidate = await run(adapter_files, f"{job.model}:{job.id}")
        serving_row = await self.store.promoted(job.tenant, job.model)
        serving: EvalReport | None = None
        if serving_row is not None:
            stored = (serving_row.eval_report.get("evals") or {}).get("candidate")
            if stored and stored.get("eval_set") == eval_set.digest():
                serving = EvalReport.model_validate(stored)
                serving.model = serving_row.public_id
            else:
                try:
                    files = read_bundle(Path(serving_row.bundle_path))
                    verified = bundle.verify(files, self.trusted_keys)
                    if verified.digest != serving_row.digest:
                        raise bundle.BundleError("its digest differs from the registry's")
                except (OSError, ValueError) as exc:
                    # Nothing to compare with: fail closed, keep what serves.
                    why = f"not promoted: {serving_row.public_id}'s bundle cannot be read: {exc}"
                    decision = GateDecision(False, [why])
                    return decision, {"eval_set": eval_set.digest(), "gate": decision.as_dict()}
                serving = await run(files, serving_row.public_id)
        if serving is None:
            serving = await run(None, job.model)
        decision = gate(candidate, serving)
        return decision, {
            "eval_set": eval_set.digest(),
            "candidate": candidate.model_dump(),
            "serving": serving.model_dump(),
            "candidate_summary": candidate.summary(),
            "serving_summary": serving.summary(),
            "gate": decision.as_dict(),
        }

    # -- state changes: stored, then published --
    async def _move(
        self,
        job: jobs.FineTuningJob,
        to: jobs.Status,
        *,
        error: jobs.JobError | None = None,
        fine_tuned_model: str | None = None,
        trained_tokens: int | None = None,
        adapter: dict[str, Any] | None = None,
    ) -> jobs.FineTuningJob:
        new, ev = jobs.transition(
            job,
            to,
            self.clock(),
            error=error,
            fine_tuned_model=fine_tuned_model,
            trained_tokens=trained_tokens,
        )
        await self.store.save_job(new, ev)
        await self._emit(new, ev, adapter)
        return new

    async def _emit(
        self,
        job: jobs.FineTuningJob,
        ev: jobs.JobEvent | None,
        adapter: dict[str, Any] | None = None,
    ) -> None:
        status = FineTuningJobStatus(
            tenant=job.tenant,
            job_id=job.id,
            status=job.status,
            job=job.public(),
            event=ev.model_dump() if ev else None,
            adapter={k: v for k, v in adapter.items() if k != "eval_report"} if adapter else None,
        )
        try:
            await self.publish(status)
        except Exception:
            # The store has it; a listener that missed the event reads the job.
            log.exception("could not publish the status of %s", job.id)

    async def _audit(self, action: str, req: FineTuningJobRequested, **fields: Any) -> None:
        if self.audit is not None:
            await self.audit(action, req.ctx, **fields)

    # -- cancel (broadcast to every replica) --
    async def cancel(self, msg: FineTuningCancel) -> None:
        flag = self.running.get(msg.job_id)
        if flag is not None:
            flag.set()  # the replica training it stops at the next step
            return
        row = await self.store.job(msg.tenant, msg.job_id)
        if row is not None and row.status in ("validating_files", "queued"):
            await self._move(jobs.FineTuningJob.model_validate(row.job), "cancelled")

    # -- promotion and rollback: broadcast on models.changed --
    async def changed(self, kind: str, row: Any, previous: str | None) -> None:
        """`tenant/base:ft` now resolves to `row`'s digest: routers, runtimes and workers
        drop what they cached for it (published after the registry changed)."""
        if self.announce is None:
            return
        event = ModelsChanged.model_validate(
            {
                "kind": kind,
                "tenant": row.tenant,
                "base_model": row.base_model,
                "public_id": public_id(row.tenant, row.base_model, None),
                "digest": row.digest,
                "previous": previous,
            }
        )
        try:
            await self.announce(event)
        except Exception:
            log.exception("could not announce %s of %s", kind, row.public_id)

    # -- the API (trainer.api), always within the caller's tenant --
    async def api(self, req: TrainerRequest) -> TrainerReply:
        ctx, op = req.ctx, req.operation
        try:
            match op:
                case JobsCreate():
                    return await self._create(ctx, op)
                case JobsList():
                    return await self._jobs(ctx.tenant, op)
                case JobOp(op="jobs.retrieve"):
                    return await self._job(ctx.tenant, op.job_id)
                case JobOp(op="jobs.events"):
                    return await self._events(ctx.tenant, op)
                case JobOp(op="jobs.checkpoints"):
                    return await self._checkpoints(ctx.tenant, op)
                case JobOp(op="jobs.cancel"):
                    return await self._cancel_op(ctx.tenant, op.job_id)
                case AdaptersList():
                    return await self._adapters(ctx.tenant, op.base_model)
                case AdapterResolve():
                    return await self._resolve(ctx.tenant, op.model)
                case AdapterRollback():
                    return await self._rollback(ctx.tenant, op.base_model)
                case TenantErase():
                    if ctx.role not in ERASERS:
                        return _error(
                            403,
                            "Only a platform operator may erase a tenant.",
                            "insufficient_permissions",
                        )
                    return await self._erase(ctx.tenant)
                case EvalSetPut():
                    return TrainerReply(body=await self.evals.put_set(ctx, op))
                case EvalSetsList():
                    return TrainerReply(body=await self.evals.sets(ctx.tenant))
                case EvalsRun():
                    return TrainerReply(body=await self.evals.run(ctx, op))
                case EvalsList():
                    return TrainerReply(
                        body=await self.evals.runs(ctx.tenant, op.eval_set, op.limit)
                    )
                case EvalRetrieve():
                    return TrainerReply(body=await self.evals.retrieve(ctx.tenant, op.run_id))
                case FeedbackCreate():
                    return TrainerReply(body=await self.feedback.rate(ctx, op))
                case LearningGet():
                    return TrainerReply(body=await self.feedback.describe(ctx.tenant))
                case LearningConfigure():
                    return TrainerReply(body=await self.feedback.configure(ctx, op))
        except EnclaveError as exc:
            return TrainerReply(status=exc.info.status, error=exc.info)
        except EvalNotFound as exc:
            return _error(404, str(exc), "not_found")
        except bundle.BundleError as exc:
            return _error(409, f"the adapter's bundle does not verify: {exc}", "bundle_invalid")
        except NotFound as exc:
            return _error(404, str(exc), "model_not_found", "model")
        except ValueError as exc:
            return _error(400, f"bad arguments: {exc}", "invalid_request")
        return _error(400, f"unknown trainer operation {op.op!r}", "invalid_request")

    async def _erase(self, tenant: str) -> TrainerReply:
        """The tenant's erasure (the gateway's DELETE /v1/admin/tenant): its jobs, adapter
        versions and bundles. Jobs running on this replica are stopped first."""
        for job_id in list(self.running):
            row = await self.store.job(tenant, job_id)
            if row is not None:
                self.running[job_id].set()
        counts = await self.store.delete_tenant(tenant)
        if self.optins is not None:  # its turns are no longer logged anywhere
            await self.optins(tenant, False)
        bundles = await asyncio.to_thread(self.bundles.delete_tenant, tenant)
        return TrainerReply(body={"object": "tenant.erased", **counts, "bundles": bundles})

    async def _create(self, ctx: RequestContext, op: JobsCreate) -> TrainerReply:
        if self.trainable is not None and not self.trainable(op.model):
            return _error(
                400,
                f"Model {op.model} is not available for fine-tuning here.",
                "invalid_model",
                "model",
            )
        try:
            jobs.Hyperparameters.model_validate(op.hyperparameters)
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            return _error(
                400, f"invalid hyperparameters: {why}", "invalid_value", "hyperparameters"
            )
        req = FineTuningJobRequested(
            ctx=ctx,
            job_id=jobs.new_job_id(),
            created_at=self.clock(),
            **op.model_dump(exclude={"op"}),
        )
        job = await self._store_new(req)
        assert job is not None  # a fresh id
        if self.enqueue is not None:
            try:
                await self.enqueue(req)
            except Exception as exc:
                log.exception("could not queue fine-tuning job %s", job.id)
                err = jobs.JobError(code="queue_unavailable", message=f"not queued: {exc}")
                await self._move(job, "failed", error=err)
                return _error(503, "The fine-tuning queue is not available.", "trainer_unavailable")
        return TrainerReply(body=job.public())

    async def _job(self, tenant: str, job_id: str) -> TrainerReply:
        row = await self.store.job(tenant, job_id)
        if row is None:
            return _not_found(job_id)
        return TrainerReply(body=jobs.FineTuningJob.model_validate(row.job).public())

    async def _jobs(self, tenant: str, op: JobsList) -> TrainerReply:
        rows = await self.store.jobs(tenant, op.limit + 1, op.after)
        data = [jobs.FineTuningJob.model_validate(r.job).public() for r in rows[: op.limit]]
        return TrainerReply(body={"object": "list", "data": data, "has_more": len(rows) > op.limit})

    async def _events(self, tenant: str, op: JobOp) -> TrainerReply:
        row = await self.store.job(tenant, op.job_id)
        if row is None:
            return _not_found(op.job_id)
        return TrainerReply(body=_page(list(reversed(row.events)), op.limit, op.after))

    async def _checkpoints(self, tenant: str, op: JobOp) -> TrainerReply:
        row = await self.store.job(tenant, op.job_id)
        if row is None:
            return _not_found(op.job_id)
        body = _page(list(reversed(row.checkpoints)), op.limit, op.after)
        body["first_id"] = body["data"][0]["id"] if body["data"] else None
        body["last_id"] = body["data"][-1]["id"] if body["data"] else None
        return TrainerReply(body=body)

    async def _cancel_op(self, tenant: str, job_id: str) -> TrainerReply:
        row = await self.store.job(tenant, job_id)
        if row is None:
            return _not_found(job_id)
        if row.status in jobs.TERMINAL:
            return _error(400, f"the job is already {row.status}", "invalid_request", "job_id")
        msg = FineTuningCancel(tenant=tenant, job_id=row.id)
        if row.status == "running" and row.id not in self.running:
            if self.broadcast_cancel is not None:
                await self.broadcast_cancel(msg)  # the replica that trains it stops
        else:
            await self.cancel(msg)
        return await self._job(tenant, job_id)

    async def _adapters(self, tenant: str, base_model: str | None) -> TrainerReply:
        rows = await self.store.adapters(tenant, base_model)
        return TrainerReply(body={"object": "list", "data": [adapter_public(r) for r in rows]})

    async def _resolve(self, tenant: str, model: str) -> TrainerReply:
        rows = await self.store.adapters(tenant)
        found = resolve(model, tenant, [ref(r) for r in rows])
        return TrainerReply(
            body={
                "id": found.public_id,
                "base_model": found.base_model,
                "digest": found.digest,
                "version": found.version,
            }
        )

    async def _rollback(self, tenant: str, base_model: str) -> TrainerReply:
        current = await self.store.promoted(tenant, base_model)
        back = await self.store.rollback(tenant, base_model)
        if back is None:
            return _error(400, "no earlier promoted version to roll back to", "invalid_request")
        await self.changed("rolled_back", back, current.digest if current else None)
        return TrainerReply(body=adapter_public(back))


def _page(items: list[dict[str, Any]], limit: int, after: str | None) -> dict[str, Any]:
    """OpenAI's cursor page: the items after the one with id `after`, at most `limit`."""
    if after is not None:
        ids = [i.get("id") for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


def _not_found(job_id: str) -> TrainerReply:
    return _error(404, f"No fine-tuning job found with id {job_id!r}.", "not_found", "job_id")


def _error(status: int, message: str, code: str, param: str | None = None) -> TrainerReply:
    return TrainerReply(
        status=status, error=ErrorInfo(status=status, message=message, code=code, param=param)
    )
