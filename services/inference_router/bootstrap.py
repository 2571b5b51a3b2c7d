"""Builds the inference router: its registry loaded and its handlers bound before it serves.

It resolves public model ids and hands requests to a worker pool; it never relays tokens
(the worker streams deltas straight to the subject the request names).
"""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from libs.context import RequestContext, new_request_id
from libs.db.engine import make_engine, migrate_async
from libs.errors import ErrorInfo
from libs.events import (
    AdapterResolve,
    AdaptersList,
    EmbedReply,
    EmbedRequest,
    GenerateAccepted,
    GenerateRequest,
    ModelInfo,
    ModelsChanged,
    ModelsReply,
    ModelsRequest,
    RouteReply,
    RouteRequest,
    TrainerReply,
    TrainerRequest,
)
from libs.generation import hand_to_pool
from libs.metrics import StageMetrics
from libs.rpc import Bus, Peer, serve, serve_broker
from libs.telemetry import attributes, parent_context, setup_tracing, traced, with_span
from services.inference_router.adapter_routes import adapter_models, adapter_route, is_adapter_id
from services.inference_router.registry import load_registry, permitted, provider_of
from services.inference_router.routes import Routes

log = logging.getLogger("enclave.inference_router")
# How long the admin view waits for a pool's worker to answer its probe.
PROBE_S = 0.5


class Router:
    def __init__(self, bus: Bus, routes: Routes, metrics: StageMetrics | None = None) -> None:
        self.bus = bus
        self.metrics = metrics or StageMetrics("inference_router")
        self.routes = routes
        self.tracer = setup_tracing(
            "inference_router", bus.settings.trace_dir, bus.settings.otlp_endpoint
        )

    async def route(self, request: RouteRequest) -> RouteReply:
        return await self._answer(request.model, request.ctx, request.kind)

    async def _answer(self, model: str, ctx: RequestContext, kind: str) -> RouteReply:
        """The registry's route, or for a tenant's fine-tuned model id the trainer's."""
        route = await self.routes.answer(model, ctx.tenant, kind)
        if route.error is None or route.error.status != 404 or not is_adapter_id(model):
            return route
        bus = self.bus
        found = await bus.ask(
            Peer("the trainer", "trainer_unavailable", bus.settings.router_timeout_s),
            bus.subjects.trainer_api,
            TrainerRequest(ctx=ctx, operation=AdapterResolve(model=model)),
            TrainerReply,
            failed=lambda error: TrainerReply(status=error.status, error=error),
        )
        if found.error is not None:
            return RouteReply(error=found.error)
        return adapter_route(model, found.body, self.routes.current.pools)

    async def generate(self, request: GenerateRequest) -> GenerateAccepted:
        """Resolve the model and hand the request to its pool: the worker's acceptance."""
        with self.tracer.start_as_current_span(
            "route",
            context=parent_context(request.ctx),
            attributes=attributes(request.ctx, **{"gen_ai.request.model": request.model}),
        ) as span:
            request.ctx = with_span(request.ctx, span)
            route = await self._answer(request.model, request.ctx, request.kind)
            return await hand_to_pool(self.bus, request, route)

    async def embed(self, request: EmbedRequest) -> EmbedReply:
        route = await self.routes.resolve(request.model, request.ctx.tenant, "embedding")
        if isinstance(route, ErrorInfo):
            return EmbedReply(error=route)
        request.pool = route.pool
        bus = self.bus
        return await bus.ask(
            bus.peers.embedder(route.pool),
            bus.subjects.inference_worker(route.pool),
            request,
            EmbedReply,
            failed=lambda error: EmbedReply(error=error),
        )

    async def models(self, request: ModelsRequest) -> ModelsReply:
        """The models a tenant sees: those its allow-list lets through; for the admin view
        every one, each with `allowed`, its engine, provider and whether a worker serves
        its pool now."""
        registry = await self.routes.refresh()
        models = [m.info() for m in registry.visible(request.tenant)]
        if request.tenant:
            models += await self._adapters(request.tenant)
        allowed = await self.routes.allowed(request.tenant) if request.tenant else None
        if not request.admin:
            return ModelsReply(models=[m for m in models if permitted(m.id, allowed)])
        pools = registry.pools
        serving = await self._serving(sorted({m.pool for m in models if m.pool}))
        for m in models:
            pool = pools.get(m.pool, {})
            m.engine = str(pool.get("engine", ""))
            m.provider = provider_of(pool)
            m.serving = serving.get(m.pool, False)
            m.allowed = permitted(m.id, allowed)
        return ModelsReply(models=models)

    async def _serving(self, pools: list[str]) -> dict[str, bool | None]:
        """Whether some worker of each pool answers now: an empty request, which a worker
        refuses at once as unreadable; no responder is none (or all full); None where
        none answered in PROBE_S (busy)."""
        nc, s = self.bus.nc, self.bus.subjects

        async def probe(pool: str) -> bool | None:
            try:
                await nc.request(s.inference_worker(pool), b"", timeout=PROBE_S)
            except NoRespondersError:
                return False
            except Exception:
                return None
            return True

        return dict(zip(pools, await asyncio.gather(*map(probe, pools)), strict=True))

    async def _models_changed(self, msg: Msg) -> None:
        """A tenant's allow-list changed (`access`): read it again on the next request."""
        try:
            event = ModelsChanged.model_validate_json(msg.data)
        except ValueError:
            return
        if event.kind == "access":
            self.routes.forget(event.tenant)

    async def _adapters(self, tenant: str) -> list[ModelInfo]:
        """The tenant's own fine-tuned models (the trainer answers for that tenant only);
        without the trainer, the registry's models alone."""
        bus = self.bus
        ctx = RequestContext(tenant=tenant, request_id=new_request_id())
        reply = await bus.ask(
            Peer("the trainer", "trainer_unavailable", bus.settings.router_timeout_s),
            bus.subjects.trainer_api,
            TrainerRequest(ctx=ctx, operation=AdaptersList()),
            TrainerReply,
            failed=lambda error: TrainerReply(status=error.status, error=error),
        )
        if reply.error is not None:
            log.warning("adapters of %s not listed: %s", tenant, reply.error.message)
            return []
        return adapter_models(tenant, reply.body.get("data", []), self.routes.current.pools)

    async def start(self) -> None:
        # Raw subscription on the per-request path: FastStream's own handling costs more
        # than the rest of the router's work (bench/gateway.py).
        subject = self.bus.subjects.inference_generate
        generate = self.metrics.handler("inference.generate", self.generate)
        await serve(self.bus.nc, subject, GenerateRequest, generate, queue="inference_router")
        # Every replica (no queue group): a tenant's allow-list changed.
        await self.bus.nc.subscribe(self.bus.subjects.models_changed, cb=self._models_changed)

    async def stop(self) -> None:
        await self.routes.engine.dispose()


async def build(bus: Bus, broker: NatsBroker) -> Router:
    settings = bus.settings
    await migrate_async(settings)
    routes = Routes(
        load_registry(settings.models_file),
        make_engine(settings.sqlalchemy_url),
        settings.provider_url_prefixes,
    )
    await routes.refresh(force=True)
    metrics = StageMetrics("inference_router")
    router = Router(bus, routes, metrics)
    s, q = bus.subjects, "inference_router"
    # A route lookup is a hop of the turn that asked (the runtime caches its answers).
    t = router.tracer
    route = metrics.handler("inference.route", traced(t, "inference.route", router.route))
    embed = metrics.handler("inference.embed", traced(t, "inference.embed", router.embed))
    models = metrics.handler("inference.models", router.models)
    serve_broker(broker, s.inference_route, RouteRequest, route, queue=q)
    serve_broker(broker, s.inference_embed, EmbedRequest, embed, queue=q)
    serve_broker(broker, s.inference_models, ModelsRequest, models, queue=q)
    return router
