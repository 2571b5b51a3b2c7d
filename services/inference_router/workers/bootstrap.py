"""Builds one worker: its pool's engine loaded (and warmed) before it joins the pool's
queue group.

A generation is accepted at once (the reply tells the caller a worker took it), then
runs in the background: the engine's deltas are coalesced and published on the
request's deltas subject with the raw NATS client, the per-token hot path. An engine that
answers at once (the instant stand-in) sends its whole answer with the acceptance, in
one write of the client's buffer.

A generation stops when it is cancelled: `inference.cancel` names its deltas subject (the
client disconnected, a timeout ended the turn), or its runtime no longer waits for it (the
heartbeat sent every `heartbeat_s` as a request finds the inbox closed, or no runtime at
all). The engine's `emit` then raises `GenerationStopped`, which ends llama.cpp's token
loop at the next token; a generation still queued for the engine's thread never starts.

A worker holds at most its engine's slots plus `queue` generations (the pool's `queue`,
else ENCLAVE_WORKER_QUEUE). A full worker leaves its pool's queue group until a slot
frees, so NATS hands the pool's requests only to workers with room; what reached it
before it left is refused at once with 503 `worker_busy` and offered to the pool again by
the caller (libs/generation.py). When no worker has room, the client gets a 503 with
Retry-After (`no_worker_available` or `worker_busy`), never a wait without bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from opentelemetry.trace import Span

from libs.bus import event_bytes
from libs.context import WORKER_HEADER
from libs.errors import EnclaveError, ErrorInfo, worker_busy
from libs.events import (
    Delta,
    EmbedReply,
    EmbedRequest,
    GenerateAccepted,
    GenerateRequest,
    GenerationCancelled,
    ModelsChanged,
    TurnEvent,
    Usage,
)
from libs.metrics import StageMetrics
from libs.rpc import Bus, leave, serve, serve_broker, still_wanted
from libs.service import Build
from libs.settings import Settings
from libs.telemetry import attributes, parent_context, setup_tracing
from services.inference_router.adapter_choice import AdapterRefused
from services.inference_router.engine import (
    EmbeddingEngine,
    Emit,
    GenerationEngine,
    GenerationStopped,
)
from services.inference_router.registry import load_registry

_END = object()
log = logging.getLogger("enclave.worker")


class Running:
    """One generation on this worker, until it ends or is cancelled."""

    def __init__(self, request: GenerateRequest) -> None:
        self.request = request
        self.stopped = threading.Event()  # read on the engine's thread
        self.reason = ""
        self.began = False  # the engine's thread took it
        self.future: asyncio.Future[Any] | None = None

    def cancel(self, reason: str) -> None:
        """Stop it: at the next token once it runs, or now while it still queues."""
        if not self.stopped.is_set():
            self.reason = reason
            self.stopped.set()
            if not self.began and self.future is not None:
                self.future.cancel()  # off the executor's queue

    def guard(self, emit: Emit) -> Emit:
        """`emit` that stops the engine once the generation is cancelled."""

        def guarded(delta: Delta) -> None:
            if self.stopped.is_set():
                raise GenerationStopped(self.reason)
            emit(delta)

        return guarded


def make_engine(settings: Settings, pool: dict[str, Any]) -> Any:
    """The engine adapter a pool's registry entry names."""
    options = {k: v for k, v in pool.items() if k not in ("engine", "model", "queue")}
    kind = pool["engine"]
    if kind == "instant":
        from services.inference_router.adapters.instant import InstantEngine

        return InstantEngine(**options)
    if kind == "llamacpp":
        from services.inference_router.adapters.llamacpp import LlamaCppEngine, resolve_model_file

        options.setdefault("n_threads", settings.worker_threads)
        engine = LlamaCppEngine(resolve_model_file(pool["model"], settings.home), **options)
        engine.warm_up()
        return engine
    if kind == "sentence_transformers":
        from services.inference_router.adapters.sentence_transformers import (
            SentenceTransformerEngine,
        )

        return SentenceTransformerEngine(**options)
    if kind == "vllm":
        from services.inference_router.adapters.vllm import VllmEngine

        options.setdefault("home", str(settings.home))  # where verified bundles are found
        return VllmEngine(**options)
    if kind == "openai_compat":
        from services.inference_router.adapters.openai_compat import OpenAICompatEngine

        return OpenAICompatEngine(pool["model"], home=settings.home, **options)
    if kind == "peft":  # transformers + peft: LoRA adapters by digest, hot swapped
        from services.inference_router.adapters.peft_serving import from_pool

        return from_pool(settings, pool)
    raise ValueError(f"unknown engine {kind!r}")


def _failure(exc: Exception) -> bytes:
    error = ErrorInfo(status=500, message=f"The engine failed: {exc}", code="engine_error")
    if isinstance(exc, AdapterRefused):  # an adapter this worker will not serve: a 4xx
        error = exc.error()
    return event_bytes(TurnEvent(error=error, done=True))


class Worker:
    def __init__(
        self,
        bus: Bus,
        pool_name: str,
        engine: Any,
        embeds: bool,
        metrics: StageMetrics | None = None,
        queue: int = 16,
    ) -> None:
        self.bus = bus
        self.pool_name = pool_name
        self.engine = engine
        self.embeds = embeds
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}"
        self.mark = {WORKER_HEADER: self.worker_id}
        self.tracer = setup_tracing(
            f"worker-{pool_name}", bus.settings.trace_dir, bus.settings.otlp_endpoint
        )
        # llama.cpp contexts are not thread-safe: one generation at a time per engine,
        # unless the engine batches concurrent requests itself (vLLM).
        self.executor = ThreadPoolExecutor(
            max_workers=getattr(engine, "max_concurrency", 1),
            thread_name_prefix=f"engine-{pool_name}",
        )
        # Busy ratio and queue depth over the engine's threads (what autoscaling reads).
        self.metrics = metrics or StageMetrics("worker", pool_name)
        self.work = self.metrics.work(capacity=getattr(engine, "max_concurrency", 1))
        self.running: set[asyncio.Task[None]] = set()
        # The generations streaming now, by their deltas subject (what a cancel names).
        self.generations: dict[str, Running] = {}
        self.cancelled = 0  # generations stopped before their end
        # Generations held at once: one per engine slot, plus `queue` waiting for a slot.
        self.capacity = getattr(engine, "max_concurrency", 1) + max(0, queue)
        self._member: Subscription | None = None  # in the pool's queue group (not when full)
        self._room_changed = asyncio.Event()
        self._membership: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.embeds:
            await self._join()
            if not self.engine.runs_inline:
                self._membership = asyncio.create_task(self._follow_room())
            # Every worker hears every cancel (no queue group): the one running it stops.
            await self.bus.nc.subscribe(self.bus.subjects.inference_cancel, cb=self._on_cancel)
            log.info("worker %s serves pool %s", self.worker_id, self.pool_name)
        if getattr(self.engine, "swap", None) is not None:
            self.engine.swap.on_load = self.metrics.adapter_load
            await self._follow_models()

    async def _join(self) -> None:
        """Join the pool's queue group: a raw subscription on the per-request hot path."""
        subject = self.bus.subjects.inference_worker(self.pool_name)
        self._member = await serve(
            self.bus.nc, subject, GenerateRequest, self.generate, queue=self.pool_name
        )

    async def _follow_room(self) -> None:
        """Leave the pool's queue group while full, and join it again once a slot frees:
        NATS then hands the pool's requests to workers with room only, and answers "no
        responders" at once (503) when none has. What reached this worker before it left
        is refused (`worker_busy`) and offered to the pool again by the caller."""
        while True:
            await self._room_changed.wait()
            self._room_changed.clear()
            full = len(self.running) >= self.capacity
            if full and self._member is not None:
                member, self._member = self._member, None
                await leave(self.bus.nc, member)
            elif not full and self._member is None:
                await self._join()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        self._room_changed.set()

    async def _follow_models(self) -> None:
        """Every worker (no queue group) applies adapter promotions and rollbacks from
        `models.changed` to its engine's hot swap, on the engine's thread, and publishes
        the swap's own events (load_failed, drained) on the same subject."""
        loop = asyncio.get_running_loop()
        nc, subject = self.bus.nc, self.bus.subjects.models_changed

        def publish(event: ModelsChanged) -> None:
            data = event_bytes(event.model_copy(update={"worker": self.worker_id}))
            asyncio.run_coroutine_threadsafe(nc.publish(subject, data), loop)

        self.engine.set_publisher(publish)

        async def on_changed(msg: Msg) -> None:
            event = ModelsChanged.model_validate_json(msg.data)
            if event.kind in ("promoted", "rolled_back"):
                await loop.run_in_executor(self.executor, self.engine.swap.changed, event)

        await nc.subscribe(subject, cb=on_changed)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = GenerationCancelled.model_validate_json(msg.data)
        except ValueError:
            return
        running = self.generations.get(cancel.deltas_subject)
        if running is not None:
            running.cancel(cancel.reason)

    async def stop(self) -> None:
        if self._membership is not None:
            self._membership.cancel()
            # A slot freed while stopping may have joined the pool again: out for good.
            # (Bounded, and whatever ended the task is not this stop's to raise.)
            await asyncio.wait({self._membership}, timeout=1)
            if self._member is not None:
                member, self._member = self._member, None
                try:
                    await leave(self.bus.nc, member)
                except (NatsError, OSError) as exc:  # the connection went: nothing to leave
                    log.warning("worker %s could not leave its pool: %r", self.worker_id, exc)
        if self.running:
            await asyncio.wait(self.running, timeout=30)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def embed(self, request: EmbedRequest) -> EmbedReply:
        embedder: EmbeddingEngine = self.engine
        loop = asyncio.get_running_loop()
        self.work.accepted()
        try:
            vectors, tokens = await loop.run_in_executor(
                self.executor, self._started, loop, embedder.embed, request.inputs
            )
        finally:
            self.work.finished()
        return EmbedReply(vectors=vectors, prompt_tokens=tokens)

    def _started(self, loop: asyncio.AbstractEventLoop, call: Any, *args: Any) -> Any:
        """On an engine thread: the work leaves the queue (counted on the loop's thread,
        where all of `self.work` changes), then runs."""
        loop.call_soon_threadsafe(self.work.started)
        return call(*args)

    async def generate(self, request: GenerateRequest) -> GenerateAccepted:
        if not self.engine.runs_inline and len(self.running) >= self.capacity:
            # Full: refuse at once, so that the caller offers it to another worker.
            raise EnclaveError.of(worker_busy(self.pool_name, self.capacity))
        span = self.tracer.start_span(
            "generate",
            context=parent_context(request.ctx),
            attributes=attributes(request.ctx, **{"enclave.pool": self.pool_name}),
        )
        accepted = GenerateAccepted(
            accepted=True, worker=self.worker_id, timeout_s=request.timeout_s
        )
        if self.engine.runs_inline:
            # The answer leaves with the acceptance: one flush, one wake-up of the caller.
            # (Never waits for a slot: not counted as busy, it holds none across an await.)
            started = time.perf_counter()
            data, usage = self._answer_inline(request)
            answered = time.perf_counter()
            await self.send(request, data)
            self._observe(span, started, answered, usage, ok=usage is not None)
            return accepted
        self.work.accepted()
        task = asyncio.create_task(self._stream(request, span))
        self.running.add(task)
        task.add_done_callback(self._done)
        if len(self.running) >= self.capacity:
            self._room_changed.set()  # full: leave the queue group
        return accepted

    def _observe(
        self,
        span: Span,
        started: float,
        first_token_at: float | None,
        usage: Usage | None,
        ok: bool,
    ) -> None:
        """A generation is over: counted (`enclave_requests_total{service="worker"}`, its
        duration) and its span closed with the time to first token and the tokens."""
        now = time.perf_counter()
        self.metrics.observe_request("inference.generate", 200 if ok else 500, now - started)
        if first_token_at is not None:
            span.set_attribute("enclave.time_to_first_token_s", first_token_at - started)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        span.set_attribute("enclave.outcome", "ok" if ok else "error")
        span.end()

    def _answer_inline(self, request: GenerateRequest) -> tuple[bytes, Usage | None]:
        """The whole turn of an engine that answers at once, as one event (and its usage;
        None when it failed)."""
        deltas: list[Delta] = []
        try:
            usage = self.engine.generate(request, deltas.append)
        except Exception as exc:
            return _failure(exc), None
        return event_bytes(TurnEvent(deltas=deltas, usage=usage, done=True)), usage

    async def send(self, request: GenerateRequest, data: bytes) -> None:
        """One event of the turn: to the client first when the runtime asked for that (it is
        the latency that counts), and always to the runtime, which watches the turn."""
        nc = self.bus.nc
        if request.client_subject:
            await nc.publish(
                request.client_subject, data, headers={**request.client_headers, **self.mark}
            )
        await nc.publish(request.deltas_subject, data, headers=self.mark)

    async def _stream(self, request: GenerateRequest, span: Span) -> None:
        running = Running(request)
        self.generations[request.deltas_subject] = running
        beating = asyncio.create_task(self._heartbeat(running))
        try:
            await self._generate(running, span)
        finally:
            beating.cancel()
            self.generations.pop(request.deltas_subject, None)

    async def _generate(self, running: Running, span: Span) -> None:
        request = running.request
        gen: GenerationEngine = self.engine
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        started = time.perf_counter()
        first_token_at: float | None = None
        usage: Usage | None = None

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        future = loop.run_in_executor(
            self.executor,
            self._started_unless,
            running,
            loop,
            gen.generate,
            request,
            running.guard(emit),
        )
        running.future = future
        future.add_done_callback(lambda _: self._finished(running))
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, _END))
        try:
            finished = False
            while not finished:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                finished = batch[-1] is _END
                deltas = [d for d in batch if d is not _END]
                if deltas and not running.stopped.is_set():
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    await self.send(request, event_bytes(TurnEvent(deltas=deltas)))
            try:
                usage = future.result()
            except (GenerationStopped, asyncio.CancelledError):
                # Nobody reads it any more: nothing is sent.
                self.cancelled += 1
                log.info("generation %s cancelled (%s)", request.ctx.request_id, running.reason)
                return
            except Exception as exc:
                await self.send(request, _failure(exc))
                return
            await self.send(request, event_bytes(TurnEvent(usage=usage, done=True)))
        finally:
            self._observe(span, started, first_token_at, usage, ok=usage is not None)

    def _finished(self, running: Running) -> None:
        if not running.began:  # cancelled while it queued: it leaves the queue unrun
            self.work.started()
        self.work.finished()

    def _started_unless(
        self, running: Running, loop: asyncio.AbstractEventLoop, call: Any, *args: Any
    ) -> Any:
        """On an engine thread: a generation cancelled while it queued never starts."""
        loop.call_soon_threadsafe(self.work.started)
        running.began = True
        if running.stopped.is_set():
            raise GenerationStopped(running.reason)
        return call(*args)

    async def _heartbeat(self, running: Running) -> None:
        """Tell the runtime this generation is alive, and stop it once the runtime no
        longer waits for it (its inbox closed, or the runtime died)."""
        settings = self.bus.settings
        beat = event_bytes(TurnEvent(heartbeat=True))
        subject = running.request.deltas_subject
        while not running.stopped.is_set():
            await asyncio.sleep(settings.heartbeat_s)
            # Its answer is waited for one beat at most: a slow answer must not stretch the
            # beat past the runtime's `stream_idle_s`, which would call this worker lost.
            if not await still_wanted(self.bus.nc, subject, beat, settings.heartbeat_s):
                running.cancel("client_gone")


def builder(settings: Settings, pool_name: str) -> Build:
    """The build of a worker of `pool_name` (its engine loads here, before it serves)."""
    registry = load_registry(settings.models_file)
    if pool_name not in registry.pools:
        raise SystemExit(f"unknown pool {pool_name!r}; the registry has {sorted(registry.pools)}")
    pool = registry.pools[pool_name]

    async def build(bus: Bus, broker: NatsBroker) -> Worker:
        engine = await asyncio.to_thread(make_engine, settings, pool)
        embeds = pool["engine"] == "sentence_transformers"
        queue = int(pool.get("queue", settings.worker_queue))
        metrics = StageMetrics("worker", pool_name)
        worker = Worker(bus, pool_name, engine, embeds, metrics, queue=queue)
        if embeds:
            subject = bus.subjects.inference_worker(pool_name)
            serve_broker(broker, subject, EmbedRequest, worker.embed, queue=pool_name)
        return worker

    return build
