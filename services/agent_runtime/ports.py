"""The turn's ports on NATS: `RuntimePorts` holds what every turn shares (the bus, the
generation client, the input passthrough), `NatsTurn` is one turn's view of it (its
client's subject and headers)."""

from __future__ import annotations

import logging
from typing import Literal, TypeVar

from pydantic import BaseModel

from libs import events as ev
from libs.context import RUNTIME_HEADER, WORKER_HEADER, RequestContext
from libs.errors import ErrorInfo
from libs.generation import AnyGeneration, FailoverGeneration, GenerationClient
from libs.guardrails_client import ask_guardrails
from libs.rpc import Bus
from services.agent_runtime.passthrough import InputPassthrough

log = logging.getLogger("enclave.agent_runtime")
# The memory service's replies to a turn: each carries its `error`.
Answer = TypeVar("Answer", ev.RetrieveReply, ev.GroundReply)


class RuntimePorts:
    """What the turns of one runtime replica share."""

    def __init__(
        self,
        bus: Bus,
        generations: GenerationClient,
        passthrough: InputPassthrough,
        replica: str,
    ) -> None:
        self.bus = bus
        self.generations = generations
        self.passthrough = passthrough
        self.replica = replica

    def turn(self, event: ev.ChatRequested) -> NatsTurn:
        return NatsTurn(self, event)

    async def screen(self, check: ev.GuardrailCheck) -> ev.GuardrailVerdict:
        # A tenant whose policy checks nothing on input is not asked until it changes.
        held = self.passthrough.held(check)
        if held is not None:
            return held
        asked_at = self.passthrough.generation
        verdict = await ask_guardrails(self.bus, check)
        self.passthrough.grant(check, verdict, asked_at)
        return verdict

    async def retrieve(self, request: ev.RetrieveRequest) -> ev.RetrieveReply:
        return await self._ask_memory(self.bus.subjects.memory_retrieve, request, ev.RetrieveReply)

    async def ground(self, request: ev.GroundRequest) -> ev.GroundReply:
        return await self._ask_memory(self.bus.subjects.memory_ground, request, ev.GroundReply)

    async def _ask_memory(self, subject: str, request: BaseModel, reply: type[Answer]) -> Answer:
        """The memory service's answer; when it cannot answer, its error as the reply."""
        return await self.bus.ask(
            self.bus.peers.memory, subject, request, reply, failed=lambda e: reply(error=e)
        )

    async def remember(self, event: ev.MemoryStoreRequested) -> None:
        # JetStream: the turn is remembered even if the memory service is down right now.
        try:
            await self.bus.nc.jetstream().publish(
                self.bus.subjects.memory_store,
                event.model_dump_json(exclude_none=True).encode(),
                headers=event.ctx.headers(),
            )
        except Exception:  # the answer is delivered; a lost memory must not redo the turn
            log.warning("memory.store publish failed for %s", event.ctx.request_id)


class NatsTurn:
    """`TurnPorts` of one turn: its events go to the gateway's subject for it, with the
    turn's headers and, once a worker streams, the replicas that serve it."""

    def __init__(self, shared: RuntimePorts, event: ev.ChatRequested) -> None:
        self.shared = shared
        self.subject = event.reply_subject
        self.headers = event.ctx.headers()
        self.generation: AnyGeneration | None = None
        self.first: AnyGeneration | None = None  # the turn's first generation (its TTFT)
        # An input leaving for an external provider: the route, what was sent, and how
        # many entities the input screening replaced (for the external-call audit).
        self.external: tuple[ev.RouteReply, ev.GenerateRequest] | None = None
        self.redactions = 0
        self._serving: dict[str, str] | None = None

    async def screen(self, check: ev.GuardrailCheck) -> ev.GuardrailVerdict:
        verdict = await self.shared.screen(check)
        if check.direction == "input":
            self.redactions = len(verdict.entities)
        return verdict

    def external_call(self) -> tuple[str, str, ev.GenerateRequest] | None:
        """(provider, pool, request) when the turn's answer came from an external provider."""
        if self.external is None or self.generation is None:
            return None
        route, request = self.external
        pool = (
            self.generation.pool
            if isinstance(self.generation, FailoverGeneration)
            else route.pool or ""
        )
        provider = route.providers.get(pool)
        return (provider, pool, request) if provider else None

    async def route(
        self, ctx: RequestContext, model: str, kind: Literal["chat", "completion"]
    ) -> ev.RouteReply:
        return await self.shared.generations.route(ctx, model, kind)

    def generate(
        self, request: ev.GenerateRequest, route: ev.RouteReply, direct: bool
    ) -> AnyGeneration:
        if route.external:
            self.external = (route, request)
        if direct:
            request.client_subject = self.subject
            request.client_headers = {**self.headers, RUNTIME_HEADER: self.shared.replica}
        self.generation = self.shared.generations.start_any(request, route)
        if self.first is None:
            self.first = self.generation
        return self.generation

    async def send(self, event: ev.TurnEvent) -> None:
        await self.shared.bus.nc.publish(
            self.subject, event.model_dump_json(exclude_none=True).encode(), headers=self._headers()
        )

    def _headers(self) -> dict[str, str]:
        if self._serving is not None:
            return self._serving
        if self.generation is None or not self.generation.worker:
            return self.headers
        # The worker is known from its first message on.
        self._serving = {
            **self.headers,
            RUNTIME_HEADER: self.shared.replica,
            WORKER_HEADER: self.generation.worker,
        }
        return self._serving

    async def retrieve(self, request: ev.RetrieveRequest) -> ev.RetrieveReply:
        return await self.shared.retrieve(request)

    async def remember(self, event: ev.MemoryStoreRequested) -> None:
        await self.shared.remember(event)

    async def ground(self, request: ev.GroundRequest) -> ev.GroundReply:
        return await self.shared.ground(request)

    async def fail(self, error: ErrorInfo) -> None:
        """The turn failed inside the runtime: its client hears it all the same."""
        await self.send(ev.TurnEvent(error=error, done=True))
