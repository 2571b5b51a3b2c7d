"""Worker wiring: one process serves one pool, in the pool's queue group.

A generation is accepted at once (the reply tells the router a worker took it), then
runs in the background: the engine's deltas are coalesced and published on the
request's deltas subject with the raw NATS client, the per-token hot path.
"""

from __future__ import annotations

import asyncio
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faststream import FastStream
from nats.aio.msg import Msg

from libs.bus import event_bytes, make_broker
from libs.context import WORKER_HEADER
from libs.errors import ErrorInfo
from libs.events import (
    Delta,
    EmbedReply,
    EmbedRequest,
    GenerateAccepted,
    GenerateRequest,
    TurnEvent,
)
from libs.settings import Settings
from libs.telemetry import attributes, parent_context, setup_tracing
from services.inference_router.engine import EmbeddingEngine, GenerationEngine
from services.inference_router.registry import load_registry

_END = object()


def make_engine(settings: Settings, pool: dict[str, Any]) -> Any:
    """The engine adapter a pool's registry entry names."""
    options = {k: v for k, v in pool.items() if k not in ("engine", "model")}
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

        return VllmEngine(**options)
    raise ValueError(f"unknown engine {kind!r}")


def build_app(settings: Settings, pool_name: str) -> FastStream:
    registry = load_registry(settings.models_file)
    if pool_name not in registry.pools:
        raise SystemExit(f"unknown pool {pool_name!r}; the registry has {sorted(registry.pools)}")
    pool = registry.pools[pool_name]
    engine = make_engine(settings, pool)
    broker = make_broker(settings, f"worker-{pool_name}")
    worker_id = f"{socket.gethostname()}-{os.getpid()}"
    mark = {WORKER_HEADER: worker_id}
    tracer = setup_tracing(f"worker-{pool_name}", settings.trace_dir)
    # llama.cpp contexts are not thread-safe: one generation at a time per engine, unless
    # the engine batches concurrent requests itself (vLLM).
    executor = ThreadPoolExecutor(
        max_workers=getattr(engine, "max_concurrency", 1), thread_name_prefix=f"engine-{pool_name}"
    )
    running: set[asyncio.Task[None]] = set()
    subject = settings.subjects.inference_worker(pool_name)

    def answer_inline(request: GenerateRequest) -> bytes:
        """The whole turn of an engine that answers at once, as one event."""
        deltas: list[Delta] = []
        try:
            usage = engine.generate(request, deltas.append)
        except Exception as exc:
            return _failure(exc)
        return event_bytes(TurnEvent(deltas=deltas, usage=usage, done=True))

    async def send(request: GenerateRequest, data: bytes) -> None:
        """One event of the turn: to the client first when the runtime asked for that (it is
        the latency that counts), and always to the runtime, which watches the turn."""
        nc = broker.connection
        if request.client_subject:
            await nc.publish(
                request.client_subject, data, headers={**request.client_headers, **mark}
            )
        await nc.publish(request.deltas_subject, data, headers=mark)

    async def stream_generation(request: GenerateRequest) -> None:
        gen: GenerationEngine = engine
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        future = loop.run_in_executor(executor, gen.generate, request, emit)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, _END))
        finished = False
        while not finished:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            finished = batch[-1] is _END
            deltas = [d for d in batch if d is not _END]
            if deltas:
                await send(request, event_bytes(TurnEvent(deltas=deltas)))
        try:
            usage = future.result()
        except Exception as exc:
            await send(request, _failure(exc))
            return
        await send(request, event_bytes(TurnEvent(usage=usage, done=True)))

    app = FastStream(broker)
    if pool["engine"] == "sentence_transformers":
        embedder: EmbeddingEngine = engine

        @broker.subscriber(subject, queue=pool_name)
        async def embed(request: EmbedRequest) -> EmbedReply:
            loop = asyncio.get_running_loop()
            vectors, tokens = await loop.run_in_executor(executor, embedder.embed, request.inputs)
            return EmbedReply(vectors=vectors, prompt_tokens=tokens)

    else:

        async def on_generate(msg: Msg) -> None:
            # Raw subscription on the per-request hot path (see the router's).
            request = GenerateRequest.model_validate_json(msg.data)
            span = tracer.start_span(
                "generate",
                context=parent_context(request.ctx),
                attributes=attributes(request.ctx, **{"enclave.pool": pool_name}),
            )
            accepted = GenerateAccepted(
                accepted=True, worker=worker_id, timeout_s=request.timeout_s
            )
            # An engine that answers at once: the acceptance and the answer leave in one
            # write (one flush of the client's buffer), one wake-up of the runtime.
            answer = answer_inline(request) if engine.runs_inline else None
            await broker.connection.publish(msg.reply, event_bytes(accepted))
            if answer is not None:
                await send(request, answer)
                span.end()
                return
            task = asyncio.create_task(stream_generation(request))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: span.end())

        @app.after_startup
        async def _subscribe() -> None:
            await broker.connection.subscribe(subject, queue=pool_name, cb=on_generate)

    @app.on_shutdown
    async def _drain() -> None:
        if running:
            await asyncio.wait(running, timeout=30)
        executor.shutdown(wait=False, cancel_futures=True)

    return app


def _failure(exc: Exception) -> bytes:
    error = ErrorInfo(status=500, message=f"The engine failed: {exc}", code="engine_error")
    return event_bytes(TurnEvent(error=error, done=True))
