"""memory wiring: memory.retrieve, memory.rag and memory.upload (request/reply, queue
group `memory`) and memory.store (JetStream work queue, one durable consumer)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from faststream import FastStream
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from redis.asyncio import Redis

from libs.audit import AuditPublisher, outbox_dir
from libs.bus import ensure_streams, event_bytes, jstream, make_broker, stream_configs
from libs.context import RequestContext
from libs.db.engine import make_engine, migrate_async
from libs.errors import ErrorInfo
from libs.events import (
    ChatMessage,
    GroundReply,
    GroundRequest,
    GuardrailCheck,
    GuardrailVerdict,
    MemoryStoreRequested,
    RagReply,
    RagRequest,
    RetrieveReply,
    RetrieveRequest,
)
from libs.guardrails_client import ask_guardrails
from libs.rpc import Bus
from libs.settings import Settings
from services.memory.adapters.embedder import Embedder
from services.memory.adapters.mem0_memory import ENTITIES, MEMORIES, Memories
from services.memory.adapters.redis_buffer import ConversationBuffer
from services.memory.adapters.router_llm import RouterLLM
from services.memory.adapters.sql_rag import RagRepository
from services.memory.handlers import MemoryService
from services.memory.rag import CHUNKS, Rag
from services.memory.vectors import TenantStores, VectorBackend

log = logging.getLogger("enclave.memory")


def make_backend(settings: Settings) -> VectorBackend:
    if settings.qdrant_url:
        from services.memory.adapters.qdrant_server import ServerBackend

        return ServerBackend(settings.qdrant_url)
    from services.memory.adapters.qdrant_edge import EdgeBackend

    return EdgeBackend(settings.home / "qdrant")


def build_app(settings: Settings) -> FastStream:
    broker = make_broker(settings, "memory")
    subjects = settings.subjects
    memory_stream = next(
        c for c in stream_configs(settings) if c.name == subjects.memory_stream_name
    )
    state: dict[str, MemoryService] = {}
    tasks: set[asyncio.Task[None]] = set()

    @broker.subscriber(
        subjects.memory_store,
        stream=jstream(memory_stream),
        durable="memory",
        queue="memory",
        config=ConsumerConfig(ack_wait=300),
    )
    async def on_memory_store(event: MemoryStoreRequested) -> None:
        await state["svc"].store(event)

    app = FastStream(broker)

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def screen(ctx: RequestContext, texts: list[str]) -> GuardrailVerdict:
        check = GuardrailCheck(
            ctx=ctx,
            direction="context",
            messages=[ChatMessage(role="tool", content=t) for t in texts],
        )
        # Fail closed: unscreened text never reaches a model.
        return await ask_guardrails(Bus(broker.connection, settings), check)

    publisher: list[AuditPublisher] = []

    async def record(action: str, ctx: RequestContext, **fields: Any) -> None:
        await publisher[0].emit(action, ctx, **fields)

    @app.on_startup
    async def _start() -> None:
        await migrate_async(settings)
        await broker.connect()
        nc = broker.connection
        await ensure_streams(nc, settings)
        publisher.append(AuditPublisher(nc, subjects, "memory", outbox_dir(settings.home)).start())
        embedder = await asyncio.to_thread(Embedder)
        stores = TenantStores(make_backend(settings), [CHUNKS, MEMORIES, ENTITIES])
        redis = Redis.from_url(settings.redis_url)
        state["svc"] = MemoryService(
            Rag(RagRepository(make_engine(settings.sqlalchemy_url)), stores, embedder),
            Memories(stores, embedder, settings.home),
            ConversationBuffer(redis, settings.bus_prefix, settings.memory_buffer_ttl_s),
            RouterLLM(nc, subjects, settings.memory_extraction_model, settings.upstream_timeout_s),
            screen,
            record,
            rewrite_query=settings.memory_rewrite_query,
            rewrite_timeout_s=settings.memory_rewrite_timeout_s,
        )

        async def rag(msg: Msg) -> None:
            try:
                reply = await state["svc"].rag_op(RagRequest.model_validate_json(msg.data))
            except Exception as exc:
                reply = RagReply(status=400, body=None, error=None)
                log.warning("bad memory.rag request: %s", exc)
            await msg.respond(event_bytes(reply))

        async def upload(msg: Msg) -> None:
            h = msg.headers or {}
            ctx = RequestContext.model_validate_json(h.get("enclave-ctx", "{}"))
            reply = await state["svc"].upload(
                ctx, h.get("enclave-filename", ""), h.get("enclave-purpose", ""), bytes(msg.data)
            )
            await msg.respond(event_bytes(reply))

        async def retrieve(msg: Msg) -> None:
            try:
                reply = await state["svc"].retrieve(RetrieveRequest.model_validate_json(msg.data))
            except Exception:
                log.exception("memory.retrieve failed")
                reply = RetrieveReply()
            await msg.respond(event_bytes(reply))

        async def ground(msg: Msg) -> None:
            try:
                reply = await state["svc"].ground(GroundRequest.model_validate_json(msg.data))
            except Exception:
                log.exception("memory.ground failed")
                reply = GroundReply(
                    error=ErrorInfo(status=500, message="The grounding check failed.")
                )
            await msg.respond(event_bytes(reply))

        # Each request in its own task: a slow ingestion must not hold up a search.
        def dispatch(handler: Any) -> Any:
            async def cb(msg: Msg) -> None:
                spawn(handler(msg))

            return cb

        for subject, handler in (
            (subjects.memory_rag, rag),
            (subjects.memory_upload, upload),
            (subjects.memory_retrieve, retrieve),
            (subjects.memory_ground, ground),
        ):
            await nc.subscribe(subject, queue="memory", cb=dispatch(handler))

    @app.after_shutdown
    async def _stop() -> None:
        if "svc" in state:
            state["svc"].rag.stores.close()

    return app
