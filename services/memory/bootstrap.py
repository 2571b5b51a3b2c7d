"""Builds the memory service: its stores, embedder, conversation buffer and model client,
constructed before it serves.

memory.retrieve, memory.ground, memory.rag and memory.upload are request/reply in the
queue group `memory`, each request in its own task (a slow ingestion must not hold up a
search); memory.store is a JetStream work queue read by one durable pull consumer,
`memory`, that every replica fetches from (a replica takes a batch when it has room; one
that dies leaves its unacked turns to the others after `ack_wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets

from faststream.nats import NatsBroker, PullSub
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind

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
from libs.telemetry import setup_tracing, traced
from services.memory.adapters.embedder import Embedder
from services.memory.adapters.mem0_memory import ENTITIES, MEMORIES, Memories
from services.memory.adapters.redis_buffer import ConversationBuffer
from services.memory.adapters.router_llm import RouterLLM
from services.memory.adapters.sql_rag import RagRepository
from services.memory.handlers import MemoryService
from services.memory.rag import CHUNKS, Rag
from services.memory.vectors import TenantStores, VectorBackend

log = logging.getLogger("enclave.memory")
# The durable pull consumer on ENCLAVE_MEMORY that every replica shares.
STORE_DURABLE = "memory"
# Turns a replica takes per fetch: one, remembered before it takes the next (as the push
# consumer before it did), so that extractions do not crowd the small model's workers;
# more replicas take more at once.
STORE_BATCH = 1


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
        generations: GenerationClient | None = None,
    ) -> None:
        self.bus = bus
        self.generations = generations
        self.metrics = metrics or StageMetrics("memory")
        self.svc = svc
        self.deltas = deltas
        self.audit = audit
        self.tracer = setup_tracing("memory", bus.settings.trace_dir, bus.settings.otlp_endpoint)
        self.uploads: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self.audit.start()
        await self.deltas.start()
        if self.generations is not None:
            await self.generations.follow_models_changed()
        nc, s, svc, m, t = self.bus.nc, self.bus.subjects, self.svc, self.metrics, self.tracer
        rag = m.handler("memory.rag", traced(t, "memory.rag", svc.rag_op))
        retrieve = m.handler("memory.retrieve", traced(t, "memory.retrieve", svc.retrieve))
        ground = m.handler("memory.ground", traced(t, "memory.ground", svc.ground))
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

    async def screen(
        ctx: RequestContext, texts: list[str], pseudonyms: dict[str, str]
    ) -> GuardrailVerdict:
        check = GuardrailCheck(
            ctx=ctx,
            direction="context",
            messages=[ChatMessage(role="tool", content=t) for t in texts],
            pseudonyms=pseudonyms,
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
    memory = Memory(bus, svc, deltas, audit, StageMetrics("memory"), generations)
    store = memory.metrics.handler(
        "memory.store", traced(memory.tracer, "memory.store", svc.store, SpanKind.CONSUMER)
    )
    await drop_push_consumer(bus.nc.jetstream(), memory_stream.name or "", STORE_DURABLE)

    @broker.subscriber(
        subjects.memory_store,
        stream=jstream(memory_stream),
        durable=STORE_DURABLE,
        pull_sub=PullSub(batch_size=STORE_BATCH, timeout=5.0),
        config=ConsumerConfig(ack_wait=300),
        # Fetch replies on this service's own inbox (the bus permissions allow no other).
        inbox_prefix=f"{settings.nats_inbox_prefix}.".encode(),
    )
    async def on_memory_store(event: MemoryStoreRequested) -> None:
        await store(event)

    return memory


async def drop_push_consumer(js: JetStreamContext, stream: str, durable: str) -> None:
    """Releases before this one read memory.store through a durable *push* consumer of the
    same name, which a pull subscription cannot bind to: delete it. The stream is a work
    queue, so the turns it had not acked stay and the pull consumer delivers them."""
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return
    if info.config.deliver_subject:
        log.warning("replacing the push consumer %s on %s with a pull consumer", durable, stream)
        with contextlib.suppress(NotFoundError):  # another replica, starting too, was first
            await js.delete_consumer(stream, durable)
