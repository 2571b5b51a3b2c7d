"""The trainer in process, built by its bootstrap, on a real NATS: trainer.api answers
through the bus client, a cancel broadcast on trainer.cancel cancels a queued job, and a
job from the JetStream work queue is acked once it reached its terminal state.

The job's model is not trainable here, so it fails validation and no model loads;
tests/trainer/test_training.py trains for real."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats

from libs.bus import event_bytes
from libs.context import RequestContext
from libs.events import (
    AdapterRollback,
    FineTuningCancel,
    FineTuningJobRequested,
    JobOp,
    ModelsChanged,
    TrainerReply,
    TrainerRequest,
    TurnLogged,
)
from libs.rpc import Bus, Peer
from libs.service import running
from libs.settings import Settings
from services.trainer.bootstrap import Trainer, build
from services.trainer.jobs import new_job, new_job_id

TRAINER = Peer("the trainer", "trainer_unavailable", 10)


async def test_trainer_from_its_bootstrap(bus_settings: Settings) -> None:
    settings = bus_settings
    subjects = settings.subjects
    nc = await nats.connect(settings.nats_url)
    bus = Bus(nc, settings)

    async def status(job_id: str, want: str) -> TrainerReply:
        req = TrainerRequest(
            ctx=RequestContext(tenant="acme", request_id="r"),
            operation=JobOp(op="jobs.retrieve", job_id=job_id),
        )
        got = TrainerReply()
        for _ in range(300):
            got = await bus.ask(TRAINER, subjects.trainer_api, req, TrainerReply)
            if got.error is None and got.body["status"] == want:
                break
            await asyncio.sleep(0.1)
        return got

    try:
        async with running(settings, "trainer", build) as service:
            assert isinstance(service, Trainer)
            # A queued job (stored, not running on any replica) is cancelled by the broadcast.
            queued, created = new_job(
                tenant="acme",
                model="smollm2-135m-instruct",
                training_file="f",
                now=int(time.time()),
            )
            assert await service.service.store.create_job(queued, created)
            await nc.publish(
                subjects.trainer_cancel,
                event_bytes(FineTuningCancel(tenant="acme", job_id=queued.id)),
            )
            assert (await status(queued.id, "cancelled")).body["status"] == "cancelled"

            # A job through the work queue: failed (the model is not trainable), then acked.
            good = json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            )
            job = FineTuningJobRequested(
                ctx=RequestContext(tenant="acme", request_id="r1", actor="key-1"),
                job_id=new_job_id(),
                model="gemma-3-270m",
                training_file="file-abc",
                training_data=good,
            )
            js = nc.jetstream()
            await js.publish(subjects.trainer_jobs, event_bytes(job))
            failed = await status(job.job_id, "failed")
            assert failed.body["status"] == "failed"
            assert failed.body["error"]["code"] == "model_not_available"
            for _ in range(300):
                info = await js.consumer_info(subjects.trainer_stream_name, "trainer")
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.1)
            assert (info.num_pending, info.num_ack_pending) == (0, 0)

            # A turn from the runtime on trainer.turns: kept for a tenant that opted in.
            store = service.service.store
            await store.put_learning("acme", settings={"feedback": True})
            logged = TurnLogged(
                ctx=RequestContext(tenant="acme", request_id="r9"),
                completion_id="chatcmpl-r9",
                kind="chat",
                model="m",
                messages=[{"role": "user", "content": "hi"}],
                answer="hello",
            )
            await nc.publish(subjects.trainer_turns, event_bytes(logged))
            for _ in range(100):
                if await store.turn("acme", "chatcmpl-r9") is not None:
                    break
                await asyncio.sleep(0.05)
            kept = await store.turn("acme", "chatcmpl-r9")
            assert kept is not None and kept.answer == "hello"
    finally:
        await nc.close()


async def test_rollback_through_the_api_broadcasts_models_changed(bus_settings: Settings) -> None:
    """`adapters.rollback` moves `:ft` back a version and says so on `models.changed`, so
    that workers swap and the route caches of runtimes and memory drop the alias at once."""
    settings = bus_settings
    subjects = settings.subjects
    nc = await nats.connect(settings.nats_url)
    bus = Bus(nc, settings)
    heard: list[ModelsChanged] = []

    async def on_changed(msg: Any) -> None:
        heard.append(ModelsChanged.model_validate_json(msg.data))

    await nc.subscribe(subjects.models_changed, cb=on_changed)
    base = "smollm2-135m-instruct"
    ctx = RequestContext(tenant="acme", request_id="r")
    try:
        async with running(settings, "trainer", build) as service:
            assert isinstance(service, Trainer)
            store = service.service.store
            for version in (1, 2):
                await store.add_adapter(
                    tenant="acme",
                    base_model=base,
                    digest=f"sha256:{version}" + "0" * 63,
                    job_id=f"ftjob-{version}",
                    trained_by="key-1",
                    eval_report={},
                    meta={},
                    bundle_path="",
                    status="promoted",
                    status_reason="",
                    version=version,
                )
            other = RequestContext(tenant="globex", request_id="r")
            refused = await bus.ask(
                TRAINER,
                subjects.trainer_api,
                TrainerRequest(ctx=other, operation=AdapterRollback(base_model=base)),
                TrainerReply,
            )
            assert refused.status == 400  # globex has nothing to roll back; acme's untouched
            reply = await bus.ask(
                TRAINER,
                subjects.trainer_api,
                TrainerRequest(ctx=ctx, operation=AdapterRollback(base_model=base)),
                TrainerReply,
            )
            assert reply.error is None and reply.body["version"] == 1
            for _ in range(100):
                if heard:
                    break
                await asyncio.sleep(0.05)
            assert [(e.kind, e.tenant, e.public_id, e.digest, e.previous) for e in heard] == [
                (
                    "rolled_back",
                    "acme",
                    f"acme/{base}:ft",
                    "sha256:1" + "0" * 63,
                    "sha256:2" + "0" * 63,
                )
            ]
    finally:
        await nc.close()
