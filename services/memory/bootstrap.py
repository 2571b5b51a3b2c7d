"""Builds the memory service: its stores, embedder, conversation buffer and model client,
constructed before it serves.

memory.retrieve, memory.ground, memory.rag and memory.upload are request/reply in the
queue group `memory`, each request in its own task (a slow ingestion must not hold up a
search); memory.store is a JetStream work queue with one durable consumer.
"""

from __future__ import annotations

import asyncio
import os
import secrets

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from libs.audit import AuditPublisher, outbox_dir
from libs.bus import jstream, stream_configs
from libs.context import RequestContext
from libs.db.engine import make_engine, migrate_async
from libs.events import (
    ChatMessage,
    GroundRequest,
    GuardrailCheck,
    GuardrailVerdict,
    MemoryStoreRequested,
    RagRequest,
    RetrieveRequest,
)
from libs.generation import GenerationClient, RouteCache
from libs.guardrails_client import ask_guardrails
from libs.metrics import StageMetrics
from libs.redis_pool import redis_client
from libs.rpc import Bus, ReplyRouter, respond, serve
from libs.settings import Settings
from services.memory.adapters.embedder import Embedder
from services.memory.adapters.mem0_memory import ENTITIES, MEMORIES, Memories
from services.memory.adapters.redis_buffer import ConversationBuffer
from services.memory.adapters.router_llm import RouterLLM
from services.memory.adapters.sql_rag import RagRepository
from services.memory.handlers import MemoryService
from services.memory.rag import CHUNKS, Rag
from services.memory.vectors import TenantStores, VectorBackend


def make_backend(settings: Settings) -> VectorBackend:
    if settings.qdrant_url:
        from services.memory.adapters.qdrant_server import ServerBackend

        return ServerBackend(settings.qdrant_url)
    from services.memory.adapters.qdrant_edge import EdgeBackend

    return EdgeBackend(settings.home / "qdrant")


class Memory:
    """The memory service on the bus."""

    def __init__(
        self,
        bus: Bus,
        svc: MemoryService,
        deltas: ReplyRouter,
        audit: AuditPublisher,
        metrics: StageMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.metrics = metrics or StageMetrics("memory")
        self.svc = svc
        self.deltas = deltas
        self.audit = audit
        self.uploads: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self.audit.start()
        await self.deltas.start()
        nc, s, svc, m = self.bus.nc, self.bus.subjects, self.svc, self.metrics
        rag = m.handler("memory.rag", svc.rag_op)
        retrieve = m.handler("memory.retrieve", svc.retrieve)
        ground = m.handler("memory.ground", svc.ground)
        await serve(nc, s.memory_rag, RagRequest, rag, queue="memory", concurrent=True)
        await serve(
            nc, s.memory_retrieve, RetrieveRequest, retrieve, queue="memory", concurrent=True
        )
        await serve(nc, s.memory_ground, GroundRequest, ground, queue="memory", concurrent=True)
        await nc.subscribe(s.memory_upload, queue="memory", cb=self._upload)

    async def _upload(self, msg: Msg) -> None:
        # Raw bytes, metadata in headers: a file is not a JSON model (and base64 would cost
        # a third of the bus's message size).
        h = msg.headers or {}
        ctx = RequestContext.model_validate_json(h.get("enclave-ctx", "{}"))
        work = self.svc.upload(
            ctx, h.get("enclave-filename", ""), h.get("enclave-purpose", ""), bytes(msg.data)
        )
        task = asyncio.ensure_future(respond(self.bus.nc, msg, work, "file upload"))
        self.uploads.add(task)
        task.add_done_callback(self.uploads.discard)

    async def stop(self) -> None:
        if self.uploads:
            await asyncio.wait(self.uploads, timeout=30)
        await self.audit.close()
        self.svc.rag.stores.close()


async def build(bus: Bus, broker: NatsBroker) -> Memory:
    settings, subjects = bus.settings, bus.subjects
    await migrate_async(settings)
    audit = AuditPublisher(bus.nc, subjects, "memory", outbox_dir(settings.home))
    replica = f"mem{os.getpid()}{secrets.token_hex(3)}"
    deltas = ReplyRouter(bus.nc, subjects.inference_deltas(replica, ""))
    generations = GenerationClient(
        bus, deltas, RouteCache(settings.route_cache_s), settings.upstream_timeout_s
    )

    async def screen(ctx: RequestContext, texts: list[str]) -> GuardrailVerdict:
        check = GuardrailCheck(
            ctx=ctx,
            direction="context",
            messages=[ChatMessage(role="tool", content=t) for t in texts],
        )
        # Fail closed: unscreened text never reaches a model.
        return await ask_guardrails(bus, check)

    embedder = await asyncio.to_thread(Embedder)
    stores = TenantStores(make_backend(settings), [CHUNKS, MEMORIES, ENTITIES])
    svc = MemoryService(
        Rag(RagRepository(make_engine(settings.sqlalchemy_url)), stores, embedder),
        Memories(stores, embedder, settings.home),
        ConversationBuffer(
            redis_client(settings), settings.bus_prefix, settings.memory_buffer_ttl_s
        ),
        RouterLLM(generations, settings.memory_extraction_model),
        screen,
        audit.emit,
        rewrite_query=settings.memory_rewrite_query,
        rewrite_timeout_s=settings.memory_rewrite_timeout_s,
    )
    memory_stream = next(
        c for c in stream_configs(settings) if c.name == subjects.memory_stream_name
    )

    @broker.subscriber(
        subjects.memory_store,
        stream=jstream(memory_stream),
        durable="memory",
        queue="memory",
        config=ConsumerConfig(ack_wait=300),
    )
    async def on_memory_store(event: MemoryStoreRequested) -> None:
        await svc.store(event)

    return Memory(bus, svc, deltas, audit, StageMetrics("memory"))
