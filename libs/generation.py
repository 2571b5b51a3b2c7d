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
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Literal

from nats.aio.msg import Msg

from libs.bus import event_bytes
from libs.context import WORKER_HEADER, RequestContext
from libs.errors import (
    WORKER_BUSY,
    EnclaveError,
    ErrorInfo,
    no_worker,
    stage_lost,
    upstream_timeout,
)
from libs.events import (
    ChatMessage,
    GenerateAccepted,
    GenerateRequest,
    GenerationCancelled,
    GenerationParams,
    ModelsChanged,
    RouteReply,
    RouteRequest,
    TurnEvent,
)
from libs.failover import AttemptFailed, Breakers, NoPoolAnswered, run_with_failover
from libs.rpc import Bus, Inbox, ReplyRouter

log = logging.getLogger("enclave.generation")

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

    def models_changed(self, event: ModelsChanged) -> int:
        """An adapter was promoted or rolled back (`models.changed`): every cached route of
        that tenant's fine-tuned ids of that base model (`tenant/base:ft`, `:ft-vN`) ends
        now, not when it expires; on `access` (its model allow-list changed) every cached
        route of the tenant. How many ended."""
        if event.kind == "access":
            gone = [k for k in self._routes if k[0] == event.tenant]
            for key in gone:
                del self._routes[key]
            return len(gone)
        if event.kind not in ("promoted", "rolled_back"):
            return 0
        prefix = f"{event.tenant}/{event.base_model}:ft"
        gone = [k for k in self._routes if k[0] == event.tenant and k[1].startswith(prefix)]
        for key in gone:
            del self._routes[key]
        return len(gone)


class Generation:
    """One generation in flight: its acceptance and its deltas, as typed events.

    A streaming worker sends a heartbeat every `heartbeat_s` (skipped here); silence for
    `idle_s` means it died (`worker_lost`), no token for the pool's timeout is a 504.
    Closed before its end, it is cancelled on the worker (`inference.cancel`)."""

    def __init__(
        self,
        request: GenerateRequest,
        inbox: Inbox,
        accepting: asyncio.Future[GenerateAccepted],
        upstream_timeout_s: float,
        idle_s: float = math.inf,
        cancel: Callable[[GenerationCancelled], None] | None = None,
    ) -> None:
        self.request = request
        self.inbox = inbox
        self.accepting = accepting
        self.upstream_timeout_s = upstream_timeout_s
        self.timeout_s = upstream_timeout_s
        self.idle_s = idle_s
        self._cancel = cancel
        self.worker = ""  # the worker that streams it, from its first message on
        # When it was asked for, and when its first token came (perf_counter seconds).
        self.requested_at = time.perf_counter()
        self.first_token_at: float | None = None
        self._started = False
        self._limited = False
        self._token_by: float | None = None  # monotonic: the next token is due by then
        self._ended = False  # its last event came, or no worker took it
        self._why = "cancelled"  # what a cancel tells the worker

    def _limit(self, accepted: GenerateAccepted) -> None:
        """The pool's own limit on the wait for each token, once a worker accepted."""
        self._limited = True
        if accepted.accepted:
            upstream = self.upstream_timeout_s
            self.timeout_s = min(upstream, accepted.timeout_s or upstream)

    async def next(self) -> TurnEvent:
        """The worker's next event. Raises `GenerationFailed` when no worker accepted, none
        sent a token within the pool's timeout (504), or the worker went silent (503
        `worker_lost`)."""
        while True:
            msg = await self._message()
            if not self.worker and msg.headers:
                self.worker = msg.headers.get(WORKER_HEADER, "")
            event = TurnEvent.model_validate_json(msg.data)
            if event.heartbeat:
                continue
            self._token_by = time.monotonic() + self.timeout_s
            if self.first_token_at is None and event.deltas:
                self.first_token_at = time.perf_counter()
            if event.done or event.error is not None:
                self._ended = True
            return event

    async def _message(self) -> Msg:
        if self._started:
            if not self._limited and self.accepting.done():
                self._limit(self.accepting.result())
            if self._token_by is None:
                self._token_by = time.monotonic() + self.timeout_s
            left = self._token_by - time.monotonic()
            msg = await self.inbox.next(max(0.0, min(self.idle_s, left)))
            if msg is None:
                raise self._silent(token_due=left <= self.idle_s)
            return msg
        self._started = True
        # The worker's first delta comes as soon as its acceptance: read both at once
        # and let whichever comes first go on.
        pending = asyncio.ensure_future(self.inbox.next(self.upstream_timeout_s))
        racing: set[asyncio.Future[object]] = {self.accepting, pending}  # type: ignore[arg-type]
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        if pending.done():
            first = pending.result()
        else:
            accepted = self.accepting.result()
            if not accepted.accepted:
                pending.cancel()
                self._ended = True
                raise GenerationFailed.of(accepted.error or NOT_ROUTED)
            self._limit(accepted)
            self._token_by = time.monotonic() + self.timeout_s
            try:
                async with asyncio.timeout(min(self.timeout_s, self.idle_s)):
                    first = await pending
            except TimeoutError:
                raise self._silent(token_due=self.timeout_s <= self.idle_s) from None
        if first is None:
            raise self._silent(token_due=True)
        return first

    def _silent(self, token_due: bool) -> GenerationFailed:
        """Nothing came in time: the pool's token timeout (`token_due`: the wait ended at
        the token's deadline), or the worker died. Which deadline ended the wait decides,
        not a clock read after it: the event loop's timers may fire a millisecond before
        `time.monotonic()` reaches the deadline (uvloop's clock has millisecond steps), and
        a pool's timeout then read as a lost worker (503, and a retry) instead of a 504."""
        if token_due:
            self._why = "timeout"
            return GenerationFailed.of(
                upstream_timeout(f"no token from {self.request.model} in {self.timeout_s:g}s")
            )
        self._why = "worker_lost"
        return GenerationFailed.of(stage_lost("worker", f"silent for {self.idle_s:g}s"))

    def close(self) -> None:
        """Done with it; a generation that had not ended is cancelled on its worker."""
        self.accepting.cancel()
        self.inbox.close()
        if not self._ended and self._cancel is not None:
            self._ended = True
            self._cancel(
                GenerationCancelled(
                    ctx=self.request.ctx,
                    deltas_subject=self.request.deltas_subject,
                    reason=self._why,
                )
            )


async def hand_to_pool(bus: Bus, request: GenerateRequest, route: RouteReply) -> GenerateAccepted:
    """A worker of `route`'s pool takes `request` (the router's `inference.generate` too)."""
    if route.error is not None or route.pool is None:
        return GenerateAccepted(accepted=False, error=route.error or NOT_ROUTED)
    request.pool, request.adapter, request.timeout_s = route.pool, route.adapter, route.timeout_s
    request.upstream = route.upstreams.get(route.pool)  # a tenant's own provider settings
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


class FailoverGeneration:
    """A generation over a route with several pools (`RouteReply.pools`): the first pool
    whose worker sends a token (or a clean end) answers; one that refuses, errs or stays
    silent before that is dropped for the next (libs.failover: in order, bounded, a circuit
    breaker per pool). After the first token an error is the answer. `pool` says which
    pool answered."""

    def __init__(
        self,
        client: GenerationClient,
        request: GenerateRequest,
        route: RouteReply,
        breakers: Breakers,
    ) -> None:
        self.client = client
        self.request = request
        self.route = route
        self.breakers = breakers
        self.current: Generation | None = None
        self.pool = ""
        self.failures: tuple[AttemptFailed, ...] = ()
        self._first: TurnEvent | None = None

    @property
    def worker(self) -> str:
        return self.current.worker if self.current is not None else ""

    @property
    def requested_at(self) -> float:
        return self.current.requested_at if self.current is not None else time.perf_counter()

    @property
    def first_token_at(self) -> float | None:
        return self.current.first_token_at if self.current is not None else None

    async def _attempt(self, pool: str) -> TurnEvent:
        request = self.request.model_copy(deep=True)
        generation = self.client.start(request, self.route.model_copy(update={"pool": pool}))
        try:
            event = await generation.next()
        except EnclaveError as exc:
            generation.close()
            raise AttemptFailed(pool, exc.info.message, started=False) from None
        if event.error is not None and not event.deltas:
            generation.close()
            raise AttemptFailed(pool, event.error.message, started=False)
        self.current = generation
        return event

    async def next(self) -> TurnEvent:
        if self.current is None:
            try:
                answered = await run_with_failover(
                    self.route.pools, self._attempt, self.breakers, self.client.max_attempts
                )
            except NoPoolAnswered as exc:
                raise GenerationFailed(
                    503, f"No pool of `{self.request.model}` answered: {exc}", "no_pool_answered"
                ) from None
            self.pool, self.failures = answered.pool, answered.failures
            return answered.result
        return await self.current.next()

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


class GenerationClient:
    """Route, hand to a worker, read the deltas: shared by the runtime and memory."""

    def __init__(
        self,
        bus: Bus,
        deltas: ReplyRouter,
        routes: RouteCache,
        upstream_timeout_s: float,
        breakers: Breakers | None = None,
        max_attempts: int = 3,
    ) -> None:
        self.bus = bus
        self.deltas = deltas
        self.routes = routes
        self.upstream_timeout_s = upstream_timeout_s
        self.breakers = breakers or Breakers()  # one per pool, shared by this replica's turns
        self.max_attempts = max_attempts
        self.idle_s = bus.settings.stream_idle_s
        self._cancels: set[asyncio.Task[None]] = set()

    async def follow_models_changed(self) -> None:
        """Drop cached routes on every `models.changed` broadcast (a service's start)."""

        async def changed(msg: Msg) -> None:
            try:
                event = ModelsChanged.model_validate_json(msg.data)
            except ValueError:
                log.warning("unreadable models.changed event ignored")
                return
            self.routes.models_changed(event)

        await self.bus.nc.subscribe(self.bus.subjects.models_changed, cb=changed)

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

    def start_any(
        self, request: GenerateRequest, route: RouteReply
    ) -> Generation | FailoverGeneration:
        """`start`, or over the route's pools in order when it lists several."""
        if len(route.pools) > 1:
            return FailoverGeneration(self, request, route, self.breakers)
        return self.start(request, route)

    def start(self, request: GenerateRequest, route: RouteReply) -> Generation:
        """Hand `request` to `route`'s pool; its deltas come to this replica."""
        key = f"{request.ctx.request_id}-{secrets.token_hex(3)}"
        inbox = self.deltas.open(key)
        request.deltas_subject = inbox.subject
        accepting = asyncio.ensure_future(self._accept(request, route))
        return Generation(
            request, inbox, accepting, self.upstream_timeout_s, self.idle_s, self._cancel
        )

    def _cancel(self, cancel: GenerationCancelled) -> None:
        """Tell every worker (the one running it stops): the generation's reader is done."""
        sending = asyncio.ensure_future(self._send_cancel(cancel))
        self._cancels.add(sending)
        sending.add_done_callback(self._cancels.discard)

    async def _send_cancel(self, cancel: GenerationCancelled) -> None:
        try:
            await self.bus.nc.publish(
                self.bus.subjects.inference_cancel,
                event_bytes(cancel),
                headers=cancel.ctx.headers(),
            )
        except Exception:  # the worker's heartbeat finds the inbox closed all the same
            log.warning("inference.cancel for %s not sent", cancel.ctx.request_id)

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


AnyGeneration = Generation | FailoverGeneration
