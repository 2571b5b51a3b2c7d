"""Builds the trainer: the schema migrated, its signing keys ensured, the store, bundles
and engines ready, before it serves. A durable JetStream pull consumer on `trainer.jobs`
runs one job at a time; `trainer.cancel` (core NATS, every replica) stops a job;
`trainer.api` (request/reply, queue group `trainer`) answers jobs, events, checkpoints and
adapters.

A job message is acked when the job reached a terminal state (stored in SQL); while it
trains the trainer marks it in progress every `progress_s`, so JetStream redelivers it
only if the trainer died, and the redelivered job picks up from its stored state.
Replicas share the consumer: each pulls the next job when its current one is done.
The base model loads lazily on the first job (≈ 13-40 s for SmolLM2-135M on 2 cores).

The consumer is a raw nats-py pull subscription, not a FastStream subscriber: a job runs
for minutes, is acked only at its terminal state and marked in progress meanwhile, which
is this loop's own doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import nats.errors
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from libs.audit import AuditPublisher, outbox_dir
from libs.bus import event_bytes
from libs.db.engine import make_engine, migrate_async
from libs.events import (
    FineTuningCancel,
    FineTuningJobRequested,
    FineTuningJobStatus,
    ModelsChanged,
    TrainerRequest,
    TurnLogged,
)
from libs.learning_optins import LearningOptIns
from libs.rpc import Bus, serve
from libs.settings import Settings
from libs.signing import ensure_key_pair, load_private_key, trusted_keys
from services.trainer.adapters.base_models import trainable_models
from services.trainer.adapters.bundles import BundleDir
from services.trainer.adapters.sql import TrainerStore
from services.trainer.config import TrainerSettings, load_trainer_settings
from services.trainer.engine import Engine
from services.trainer.service import TrainerService

log = logging.getLogger("enclave.trainer")


class Engines:
    """One PeftEngine per base model, loaded on first use and kept."""

    def __init__(self, settings: Settings, threads: int) -> None:
        self.models = trainable_models(settings.models_file)
        self.threads = threads
        self.loaded: dict[str, Engine] = {}
        self.lock = threading.Lock()

    def __call__(self, model: str) -> Engine | None:
        spec = self.models.get(model)
        if spec is None:
            return None
        with self.lock:
            if model not in self.loaded:
                from services.trainer.adapters.peft_engine import PeftEngine

                self.loaded[model] = PeftEngine(
                    spec.directory, spec.gguf_file, model, threads=self.threads
                )
            return self.loaded[model]


class Trainer:
    def __init__(
        self, bus: Bus, service: TrainerService, audit: AuditPublisher, cfg: TrainerSettings
    ) -> None:
        self.bus = bus
        self.service = service
        self.audit = audit
        self.cfg = cfg
        self.subscriptions: list[Subscription | JetStreamContext.PullSubscription] = []
        self.consumer: asyncio.Task[None] | None = None
        self.ticker: asyncio.Task[None] | None = None

    async def cancel(self, msg: Msg) -> None:
        try:
            await self.service.cancel(FineTuningCancel.model_validate_json(msg.data))
        except Exception:
            log.exception("cancel failed")

    async def turn(self, msg: Msg) -> None:
        try:
            await self.service.feedback.log_turn(TurnLogged.model_validate_json(msg.data))
        except Exception:
            log.exception("a logged turn was not kept")

    async def start(self) -> None:
        self.audit.start()
        nc, subjects = self.bus.nc, self.bus.subjects
        self.subscriptions.append(await nc.subscribe(subjects.trainer_cancel, cb=self.cancel))
        # Turns as screened, for learning from feedback: one replica keeps each.
        self.subscriptions.append(
            await nc.subscribe(subjects.trainer_turns, queue="trainer", cb=self.turn)
        )
        self.subscriptions.append(
            await serve(nc, subjects.trainer_api, TrainerRequest, self.service.api, queue="trainer")
        )
        jobs = await nc.jetstream().pull_subscribe(
            subjects.trainer_jobs,
            durable="trainer",
            stream=subjects.trainer_stream_name,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=self.cfg.ack_wait_s, max_ack_pending=1000
            ),
        )
        self.subscriptions.append(jobs)
        self.consumer = asyncio.create_task(_consume(jobs, self.service, self.cfg.progress_s))
        try:
            await self.service.feedback.announce_optins()
        except Exception:  # the next change of a setting tells the runtimes again
            log.exception("the learning opt-ins were not announced")
        if self.cfg.schedule_s > 0:
            self.ticker = asyncio.create_task(_tick(self.service, self.cfg.schedule_s))

    async def stop(self) -> None:
        for task in [self.consumer, self.ticker, *self.service.evals.tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Unsubscribed here, the broker's drain does not wait 30 s on the pull subscription.
        for sub in self.subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self.audit.close()


async def _consume(
    sub: JetStreamContext.PullSubscription, svc: TrainerService, progress_s: float
) -> None:
    while True:
        try:
            msgs = await sub.fetch(1, timeout=5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except Exception:
            log.exception("fetching a job failed")
            await asyncio.sleep(1)
            continue
        for msg in msgs:
            await _one(msg, svc, progress_s)


async def _tick(svc: TrainerService, every_s: float) -> None:
    """The daily jobs (nightly evals): checked every `every_s`, each run once a day."""
    while True:
        try:
            await svc.tick()
        except Exception:
            log.exception("the trainer's schedule tick failed")
        await asyncio.sleep(every_s)


async def _one(msg: Msg, svc: TrainerService, progress_s: float) -> None:
    try:
        req = FineTuningJobRequested.model_validate_json(msg.data)
    except Exception as exc:
        log.error("dropping a malformed fine-tuning job: %s", exc)
        await msg.term()
        return

    async def keep_alive() -> None:
        while True:
            await asyncio.sleep(progress_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    alive = asyncio.create_task(keep_alive())
    try:
        await svc.run_job(req)
    except LookupError as exc:
        # The job id is another tenant's: never run it, never retry it.
        log.error("refusing fine-tuning job %s: %s", req.job_id, exc)
        alive.cancel()
        await msg.term()
        return
    except Exception:
        log.exception("fine-tuning job %s could not be run; redelivered later", req.job_id)
        alive.cancel()
        await msg.nak(delay=5)
        return
    alive.cancel()
    await msg.ack()


async def build(bus: Bus, broker: NatsBroker) -> Trainer:
    settings, subjects, nc = bus.settings, bus.subjects, bus.nc
    cfg = load_trainer_settings(settings)
    assert cfg.signing_key_file and cfg.public_key_file and cfg.bundles_dir
    await migrate_async(settings)
    ensure_key_pair(cfg.signing_key_file, cfg.public_key_file)
    audit = AuditPublisher(nc, subjects, "trainer", outbox_dir(settings.home))

    async def publish(status: FineTuningJobStatus) -> None:
        await nc.publish(subjects.trainer_status(status.job_id), event_bytes(status))

    async def enqueue(job: FineTuningJobRequested) -> None:
        await nc.jetstream().publish(subjects.trainer_jobs, event_bytes(job))

    async def broadcast_cancel(msg: FineTuningCancel) -> None:
        await nc.publish(subjects.trainer_cancel, event_bytes(msg))

    async def announce(event: ModelsChanged) -> None:
        await nc.publish(subjects.models_changed, event_bytes(event))
        await nc.flush(timeout=2)

    engines = Engines(settings, cfg.threads)

    service = TrainerService(
        store=TrainerStore(make_engine(settings.sqlalchemy_url)),
        # Loading a model takes seconds: never on the event loop.
        engines=engines,
        bundles=BundleDir(cfg.bundles_dir),
        signing_key=load_private_key(cfg.signing_key_file),
        trusted_keys=trusted_keys([cfg.public_key_file]),
        publish=publish,
        audit=audit.emit,
        enqueue=enqueue,
        broadcast_cancel=broadcast_cancel,
        announce=announce,
        trainable=lambda model: model in engines.models,
        target_steps=cfg.target_steps,
        nightly_hour=cfg.nightly_hour,
        optins=LearningOptIns(bus.nc, bus.subjects, settings.stream_replicas).set,
    )
    return Trainer(bus, service, audit, cfg)
