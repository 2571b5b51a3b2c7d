"""inference_router wiring: resolves public model ids and hands each request to a worker pool.

It never relays tokens: the worker streams deltas straight to the subject the request
names, so the output guardrail stage in the agent runtime stays the only relay.
"""

from __future__ import annotations

import time

from faststream import FastStream
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from libs.bus import event_bytes, make_broker
from libs.db.engine import make_engine, migrate_async
from libs.errors import ErrorInfo, no_worker
from libs.events import (
    EmbedReply,
    EmbedRequest,
    GenerateAccepted,
    GenerateRequest,
    ModelsReply,
    ModelsRequest,
    RouteReply,
    RouteRequest,
)
from libs.settings import Settings
from libs.telemetry import attributes, parent_context, setup_tracing, with_span
from services.inference_router.adapters.sql_models import load_routes
from services.inference_router.registry import ModelRoute, Registry, load_registry

SQL_REFRESH_S = 1.0


class Routes:
    """The YAML registry joined with SQL rows, refreshed when a lookup misses."""

    def __init__(self, settings: Settings) -> None:
        self.base = load_registry(settings.models_file)
        self.current = self.base
        self.engine = make_engine(settings.sqlalchemy_url)
        self._loaded_at = 0.0

    async def refresh(self, force: bool = False) -> Registry:
        now = time.monotonic()
        if force or now - self._loaded_at > SQL_REFRESH_S:
            self._loaded_at = now
            self.current = self.base.with_routes(await load_routes(self.engine))
        return self.current

    async def answer(self, model: str, tenant: str, use: str) -> RouteReply:
        """What serves `model` for `tenant`: pool, adapter, per-token timeout, RAG default."""
        found = await self.resolve(model, tenant, use)
        if isinstance(found, ErrorInfo):
            return RouteReply(error=found)
        timeout_s = self.current.pools[found.pool].get("timeout_s")
        return RouteReply(
            pool=found.pool, adapter=found.adapter, timeout_s=timeout_s, rag=found.rag
        )

    async def resolve(self, model: str, tenant: str, use: str) -> ModelRoute | ErrorInfo:
        found = self.current.resolve(model, tenant, use)
        if isinstance(found, ErrorInfo) and found.status == 404:
            found = (await self.refresh()).resolve(model, tenant, use)
        return found


def build_app(settings: Settings) -> FastStream:
    broker = make_broker(settings, "inference_router")
    subjects = settings.subjects
    routes = Routes(settings)
    tracer = setup_tracing("inference_router", settings.trace_dir)

    async def ask_pool(
        pool: str, payload: bytes, headers: dict[str, str], timeout: float
    ) -> bytes | None:
        try:
            msg = await broker.connection.request(
                subjects.inference_worker(pool),
                payload,
                timeout=timeout,
                headers=headers,
            )
        except (NoRespondersError, NatsTimeout, TimeoutError):
            return None
        return msg.data

    async def generate(request: GenerateRequest) -> bytes:
        with tracer.start_as_current_span(
            "route",
            context=parent_context(request.ctx),
            attributes=attributes(request.ctx, **{"gen_ai.request.model": request.model}),
        ) as span:
            request.ctx = with_span(request.ctx, span)
            return await route_generation(request)

    async def route_generation(request: GenerateRequest) -> bytes:
        route = await routes.answer(request.model, request.ctx.tenant, request.kind)
        if route.error is not None or route.pool is None:
            return event_bytes(GenerateAccepted(accepted=False, error=route.error))
        request.pool, request.adapter, request.timeout_s = (
            route.pool,
            route.adapter,
            route.timeout_s,
        )
        reply = await ask_pool(
            route.pool,
            event_bytes(request),
            request.ctx.headers(),
            settings.worker_accept_timeout_s,
        )
        if reply is None:
            return event_bytes(GenerateAccepted(accepted=False, error=no_worker(route.pool)))
        return reply  # the worker's acceptance, as it is

    async def on_generate(msg: Msg) -> None:
        # Raw subscription on the per-request hot path: FastStream's own handling costs
        # more than the rest of the router's work (bench/gateway.py).
        reply = await generate(GenerateRequest.model_validate_json(msg.data))
        await broker.connection.publish(msg.reply, reply)

    @broker.subscriber(subjects.inference_route, queue="inference_router")
    async def route(request: RouteRequest) -> RouteReply:
        return await routes.answer(request.model, request.ctx.tenant, request.kind)

    @broker.subscriber(subjects.inference_embed, queue="inference_router")
    async def embed(request: EmbedRequest) -> EmbedReply:
        route = await routes.resolve(request.model, request.ctx.tenant, "embedding")
        if isinstance(route, ErrorInfo):
            return EmbedReply(error=route)
        request.pool = route.pool
        reply = await ask_pool(
            route.pool, event_bytes(request), request.ctx.headers(), settings.upstream_timeout_s
        )
        if reply is None:
            return EmbedReply(error=no_worker(route.pool))
        return EmbedReply.model_validate_json(reply)

    @broker.subscriber(subjects.inference_models, queue="inference_router")
    async def models(request: ModelsRequest) -> ModelsReply:
        registry = await routes.refresh()
        return ModelsReply(models=[m.info() for m in registry.visible(request.tenant)])

    app = FastStream(broker)

    @app.on_startup
    async def _start() -> None:
        await migrate_async(settings)
        await routes.refresh(force=True)

    @app.after_startup
    async def _subscribe() -> None:
        await broker.connection.subscribe(
            subjects.inference_generate, queue="inference_router", cb=on_generate
        )

    return app
