"""Asking the platform for a generation: route -> worker -> deltas, the same for every caller.

The router decides which pool serves a model for a tenant (`inference.route`); its answer
is reused for `route_cache_s` (`RouteCache`, pure, with an injected clock), so the router
is no hop of every request (bench/gateway.py). The caller then hands the request to the
pool itself (`inference.worker.<pool>`, the first worker of its queue group accepts) and
reads the worker's deltas through its replica's `ReplyRouter`. The agent runtime streams
them to a client; the memory service collects them into one text (`complete`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Literal

from libs.context import WORKER_HEADER, RequestContext
from libs.errors import WORKER_BUSY, EnclaveError, ErrorInfo, no_worker, upstream_timeout
from libs.events import (
    ChatMessage,
    GenerateAccepted,
    GenerateRequest,
    GenerationParams,
    RouteReply,
    RouteRequest,
    TurnEvent,
)
from libs.rpc import Bus, Inbox, ReplyRouter

Clock = Callable[[], float]
Kind = Literal["chat", "completion"]
NOT_ROUTED = ErrorInfo(status=503, message="No worker accepted.", code="no_worker_available")
# How often a request is offered to a pool whose workers answer that they are full: the
# queue group hands each offer to a worker at random, so another one may have room.
BUSY_OFFERS = 3


class GenerationFailed(EnclaveError):
    """No worker took the generation, or it went silent: the caller's turn ends with it."""


class RouteCache:
    """The router's answers per (tenant, model, kind), each kept for `ttl_s`."""

    def __init__(self, ttl_s: float, clock: Clock = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._routes: dict[tuple[str, str, str], tuple[RouteReply, float]] = {}

    def get(self, tenant: str, model: str, kind: str) -> RouteReply | None:
        held = self._routes.get((tenant, model, kind))
        if held is None or held[1] <= self.clock():
            return None
        return held[0]

    def put(self, tenant: str, model: str, kind: str, route: RouteReply) -> None:
        """Only a route to a pool is kept: an error is asked again next time."""
        if route.error is None and route.pool is not None:
            self._routes[(tenant, model, kind)] = (route, self.clock() + self.ttl_s)

    def drop(self, tenant: str, model: str, kind: str) -> None:
        """The pool had no worker: ask the router again next time (it may know a fallback)."""
        self._routes.pop((tenant, model, kind), None)


class Generation:
    """One generation in flight: its acceptance and its deltas, as typed events."""

    def __init__(
        self,
        request: GenerateRequest,
        inbox: Inbox,
        accepting: asyncio.Future[GenerateAccepted],
        upstream_timeout_s: float,
    ) -> None:
        self.request = request
        self.inbox = inbox
        self.accepting = accepting
        self.upstream_timeout_s = upstream_timeout_s
        self.timeout_s = upstream_timeout_s
        self.worker = ""  # the worker that streams it, from its first message on
        # When it was asked for, and when its first token came (perf_counter seconds).
        self.requested_at = time.perf_counter()
        self.first_token_at: float | None = None
        self._started = False
        self._limited = False

    def _limit(self, accepted: GenerateAccepted) -> None:
        """The pool's own limit on the wait for each token, once a worker accepted."""
        self._limited = True
        if accepted.accepted:
            upstream = self.upstream_timeout_s
            self.timeout_s = min(upstream, accepted.timeout_s or upstream)

    async def next(self) -> TurnEvent:
        """The worker's next event. Raises `GenerationFailed` when no worker accepted or
        none sent a token within the pool's timeout."""
        if not self._started:
            self._started = True
            # The worker's first delta comes as soon as its acceptance: read both at once
            # and let whichever comes first go on.
            pending = asyncio.ensure_future(self.inbox.next(self.upstream_timeout_s))
            racing: set[asyncio.Future[object]] = {self.accepting, pending}  # type: ignore[arg-type]
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            if pending.done():
                msg = pending.result()
            else:
                accepted = self.accepting.result()
                if not accepted.accepted:
                    pending.cancel()
                    raise GenerationFailed.of(accepted.error or NOT_ROUTED)
                self._limit(accepted)
                try:
                    msg = await asyncio.wait_for(pending, self.timeout_s)
                except TimeoutError:
                    msg = None
        else:
            if not self._limited and self.accepting.done():
                self._limit(self.accepting.result())
            msg = await self.inbox.next(self.timeout_s)
        if msg is None:
            raise GenerationFailed.of(
                upstream_timeout(f"no token from {self.request.model} in {self.timeout_s:g}s")
            )
        if not self.worker and msg.headers:
            self.worker = msg.headers.get(WORKER_HEADER, "")
        event = TurnEvent.model_validate_json(msg.data)
        if self.first_token_at is None and event.deltas:
            self.first_token_at = time.perf_counter()
        return event

    def close(self) -> None:
        self.accepting.cancel()
        self.inbox.close()


async def hand_to_pool(bus: Bus, request: GenerateRequest, route: RouteReply) -> GenerateAccepted:
    """A worker of `route`'s pool takes `request` (the router's `inference.generate` too)."""
    if route.error is not None or route.pool is None:
        return GenerateAccepted(accepted=False, error=route.error or NOT_ROUTED)
    request.pool, request.adapter, request.timeout_s = route.pool, route.adapter, route.timeout_s
    peer, subject = bus.peers.pool(route.pool), bus.subjects.inference_worker(route.pool)

    def refused(error: ErrorInfo) -> GenerateAccepted:
        if error.status == 504:  # no acceptance in time: nothing started, safe to retry
            error = no_worker(route.pool or "")
        return GenerateAccepted(accepted=False, error=error)

    for _ in range(BUSY_OFFERS):
        accepted = await bus.ask(peer, subject, request, GenerateAccepted, failed=refused)
        if accepted.error is None or accepted.error.code != WORKER_BUSY:
            break
    return accepted


class GenerationClient:
    """Route, hand to a worker, read the deltas: shared by the runtime and memory."""

    def __init__(
        self, bus: Bus, deltas: ReplyRouter, routes: RouteCache, upstream_timeout_s: float
    ) -> None:
        self.bus = bus
        self.deltas = deltas
        self.routes = routes
        self.upstream_timeout_s = upstream_timeout_s

    async def route(self, ctx: RequestContext, model: str, kind: Kind) -> RouteReply:
        """What serves `model` for the tenant (its pool, its retrieval default), cached."""
        cached = self.routes.get(ctx.tenant, model, kind)
        if cached is not None:
            return cached
        bus = self.bus
        route = await bus.ask(
            bus.peers.router,
            bus.subjects.inference_route,
            RouteRequest(ctx=ctx, model=model, kind=kind),
            RouteReply,
            failed=lambda error: RouteReply(error=error),
        )
        self.routes.put(ctx.tenant, model, kind, route)
        return route

    def start(self, request: GenerateRequest, route: RouteReply) -> Generation:
        """Hand `request` to `route`'s pool; its deltas come to this replica."""
        key = f"{request.ctx.request_id}-{secrets.token_hex(3)}"
        inbox = self.deltas.open(key)
        request.deltas_subject = inbox.subject
        accepting = asyncio.ensure_future(self._accept(request, route))
        return Generation(request, inbox, accepting, self.upstream_timeout_s)

    async def _accept(self, request: GenerateRequest, route: RouteReply) -> GenerateAccepted:
        accepted = await hand_to_pool(self.bus, request, route)
        busy = accepted.error is not None and accepted.error.code == WORKER_BUSY
        if not accepted.accepted and not busy:  # a full pool still serves the model
            self.routes.drop(request.ctx.tenant, request.model, request.kind)
        return accepted

    async def complete(
        self, ctx: RequestContext, model: str, messages: list[ChatMessage], params: GenerationParams
    ) -> str:
        """The whole answer of choice 0 as one text (what came before an engine error)."""
        route = await self.route(ctx, model, "chat")
        generation = self.start(
            GenerateRequest(ctx=ctx, model=model, messages=messages, params=params), route
        )
        text = ""
        try:
            while True:
                event = await generation.next()
                text += "".join(d.content for d in event.deltas if d.index == 0)
                if event.done or event.error is not None:
                    return text
        finally:
            generation.close()
