"""Fine-tuning jobs in OpenAI's shapes, and the state machine they move through. No I/O.

    validating_files -> queued -> running -> succeeded
          |               |          |----> failed
          |               |          '----> cancelled
          '---------------'--> failed | cancelled

A terminal job (succeeded, failed, cancelled) never changes again. Every transition
appends a `fine_tuning.job.event`; a training step may append a
`fine_tuning.job.checkpoint` with its metrics. The objects serialise to exactly the JSON
that OpenAI's API returns for `fine_tuning.jobs.retrieve`, `list_events` and
`checkpoints.list`, so the gateway can hand them to the official SDK unchanged.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ALLOWED: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


class IllegalTransition(ValueError):
    pass


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters; "auto" lets the trainer choose."""

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"


class JobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"] = "info"
    message: str
    data: dict[str, Any] = Field(default_factory=dict)
    type: Literal["message", "metrics"] = "message"


class JobCheckpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float] = Field(default_factory=dict)


class FineTuningJob(BaseModel):
    """OpenAI's `fine_tuning.job` object; `tenant` and `trained_by` are ours (not sent out)."""

    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    created_at: int
    model: str
    status: Status = "validating_files"
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    seed: int = 0
    suffix: str | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    error: JobError | None = None
    trained_tokens: int | None = None
    result_files: list[str] = Field(default_factory=list)
    organization_id: str = ""
    estimated_finish: int | None = None
    integrations: list[Any] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None
    # Ours: whose job it is and who asked for it.
    tenant: str = ""
    trained_by: str = ""

    def public(self) -> dict[str, Any]:
        """The JSON OpenAI's API returns: our own fields left out."""
        out = self.model_dump(exclude={"tenant", "trained_by"})
        if out["method"] is None:
            out["method"] = {
                "type": "supervised",
                "supervised": {"hyperparameters": out["hyperparameters"]},
            }
        return out

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def new_job_id() -> str:
    return "ftjob-" + secrets.token_hex(12)


def new_job(
    *,
    tenant: str,
    model: str,
    training_file: str,
    now: int,
    validation_file: str | None = None,
    hyperparameters: Hyperparameters | None = None,
    seed: int | None = None,
    suffix: str | None = None,
    trained_by: str = "",
    metadata: dict[str, str] | None = None,
    job_id: str | None = None,
) -> tuple[FineTuningJob, JobEvent]:
    job = FineTuningJob(
        id=job_id or new_job_id(),
        created_at=now,
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        hyperparameters=hyperparameters or Hyperparameters(),
        seed=secrets.randbelow(2**31) if seed is None else seed,
        suffix=suffix,
        tenant=tenant,
        trained_by=trained_by,
        organization_id=tenant,
        metadata=metadata,
    )
    return job, event(now, f"Created fine-tuning job: {job.id}")


def event(
    now: int,
    message: str,
    *,
    level: Literal["info", "warn", "error"] = "info",
    data: dict[str, Any] | None = None,
    metrics: bool = False,
) -> JobEvent:
    return JobEvent(
        id="ftevent-" + secrets.token_hex(12),
        created_at=now,
        level=level,
        message=message,
        data=data or {},
        type="metrics" if metrics else "message",
    )


def transition(
    job: FineTuningJob,
    to: Status,
    now: int,
    *,
    error: JobError | None = None,
    fine_tuned_model: str | None = None,
    trained_tokens: int | None = None,
    result_files: list[str] | None = None,
) -> tuple[FineTuningJob, JobEvent]:
    """The job after moving to `to` and the event saying so; IllegalTransition if not allowed."""
    if to not in ALLOWED[job.status]:
        raise IllegalTransition(f"a {job.status} job cannot become {to}")
    if to == "failed" and error is None:
        raise IllegalTransition("a failed job needs an error")
    if to == "succeeded" and not fine_tuned_model:
        raise IllegalTransition("a succeeded job needs its fine_tuned_model")
    update: dict[str, Any] = {"status": to}
    if to in TERMINAL:
        update["finished_at"] = now
    if error is not None:
        update["error"] = error
    if fine_tuned_model is not None:
        update["fine_tuned_model"] = fine_tuned_model
    if trained_tokens is not None:
        update["trained_tokens"] = trained_tokens
    if result_files is not None:
        update["result_files"] = result_files
    new = job.model_copy(update=update)
    messages = {
        "queued": "Files validated, job queued",
        "running": "Fine-tuning job started",
        "succeeded": f"The job has successfully completed: {fine_tuned_model}",
        "failed": f"The job failed: {error.message if error else ''}",
        "cancelled": "The job was cancelled",
    }
    level: Literal["info", "error"] = "error" if to == "failed" else "info"
    return new, event(now, messages[to], level=level, data={"status": to})


def checkpoint(
    job: FineTuningJob, now: int, step: int, metrics: dict[str, float], model_name: str
) -> JobCheckpoint:
    return JobCheckpoint(
        id="ftckpt-" + secrets.token_hex(12),
        created_at=now,
        fine_tuned_model_checkpoint=f"{model_name}:ckpt-step-{step}",
        fine_tuning_job_id=job.id,
        step_number=step,
        metrics={"step": float(step), **metrics},
    )


# Defaults when hyperparameters are "auto": enough steps for a small set to learn its
# answers (peft learned a new answer in ≈ 30 steps on SmolLM2-135M: shared/DEPENDENCIES.md).
AUTO_TARGET_STEPS = 30
AUTO_MAX_EPOCHS = 25
BASE_LEARNING_RATE = 2e-3


def resolve_hyperparameters(
    hp: Hyperparameters, examples: int, target_steps: int = AUTO_TARGET_STEPS
) -> Hyperparameters:
    """Concrete epochs, batch size and learning-rate multiplier for `examples` examples."""
    batch = hp.batch_size if hp.batch_size != "auto" else max(1, min(4, examples // 4 or 1))
    batch = max(1, min(int(batch), examples))
    per_epoch = -(-examples // batch)
    epochs = (
        hp.n_epochs
        if hp.n_epochs != "auto"
        else max(1, min(AUTO_MAX_EPOCHS, -(-target_steps // per_epoch)))
    )
    multiplier = 1.0 if hp.learning_rate_multiplier == "auto" else hp.learning_rate_multiplier
    return Hyperparameters(
        n_epochs=int(epochs), batch_size=batch, learning_rate_multiplier=float(multiplier)
    )
