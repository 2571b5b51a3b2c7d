"""The agent side's ports on NATS (`AgentPorts` of agent_loop.py): generations through the
runtime's generation client, the guardrails through the runtime's screen, tools through
the sandbox and memory services, children through `agent.delegate`, audit through the
runtime's publisher."""

from __future__ import annotations

import time
from typing import Any

from libs import events as ev
from libs.audit import AuditPublisher
from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.rpc import Peer
from libs.tool_calls import CallCollector
from services.agent_runtime.agent_loop import StepReply
from services.agent_runtime.ports import RuntimePorts
from services.agent_runtime.tools import ToolFailed

# The sandbox answers within its longest wall-clock limit, plus a start and a queue.
SANDBOX_SLACK_S = 15.0


class NatsAgentPorts:
    def __init__(self, shared: RuntimePorts, audit: AuditPublisher) -> None:
        self.shared = shared
        self.bus = shared.bus
        self.publisher = audit
        settings = self.bus.settings
        # Watched while it runs (libs/rpc.py): a replica killed mid-exec is the tool's
        # error (`sandbox_lost`) within about a second; the program is not run again.
        self.sandbox_peer = self.bus.peers.sandbox(SANDBOX_SLACK_S)
        self.runtime_timeout_s = settings.gateway_timeout_s

    def now(self) -> float:
        return time.monotonic()

    async def step(self, request: ev.GenerateRequest) -> StepReply:
        """One generation, collected whole (choice 0: agents ask for one)."""
        generations = self.shared.generations
        route = await generations.route(request.ctx, request.model, "chat")
        if route.error is not None:
            return StepReply(error=route.error)
        generation = generations.start(request, route)
        text: list[str] = []
        calls = CallCollector()
        finish: str | None = None
        try:
            while True:
                try:
                    event = await generation.next()
                except EnclaveError as exc:
                    return StepReply(error=exc.info)
                for d in event.deltas:
                    if d.index == 0:
                        text.append(d.content)
                        calls.add(d.tool_calls or [])
                        finish = d.finish_reason or finish
                if event.error is not None:
                    return StepReply(error=event.error)
                if event.done:
                    return StepReply(
                        content="".join(text),
                        tool_calls=calls.calls(),
                        usage=event.usage or ev.Usage(),
                        finish_reason=finish,
                    )
        finally:
            generation.close()

    async def screen(self, check: ev.GuardrailCheck) -> ev.GuardrailVerdict:
        return await self.shared.screen(check)

    async def delegate(self, request: ev.DelegateRequested) -> ev.DelegateResult:
        peer = Peer(
            "the agent runtime",
            "runtime_unavailable",
            (request.wall_s_left or self.runtime_timeout_s) + 1.0,
        )

        def failed(error: Any) -> ev.DelegateResult:
            return ev.DelegateResult(
                agent=request.agent, outcome="error", reason=error.message, error=error
            )

        return await self.bus.ask(
            peer, self.bus.subjects.agent_delegate, request, ev.DelegateResult, failed=failed
        )

    async def sandbox(self, request: ev.SandboxExecRequest) -> ev.SandboxExecReply:
        return await self.bus.ask(
            self.sandbox_peer,
            self.bus.subjects.sandbox_exec,
            request,
            ev.SandboxExecReply,
            failed=lambda error: ev.SandboxExecReply(error=error),
        )

    async def search(
        self, ctx: RequestContext, vector_store_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        request = ev.RagRequest(
            ctx=ctx,
            operation=ev.VectorStoreBodyOp(
                op="vector_stores.search", vector_store_id=vector_store_id, body=body
            ),
        )
        try:
            reply = await self.bus.ask(
                self.bus.peers.memory_api, self.bus.subjects.memory_rag, request, ev.RagReply
            )
        except EnclaveError as exc:
            raise ToolFailed(
                f"the search of `{vector_store_id}` failed: {exc.info.message}"
            ) from None
        return reply.body

    async def remember(self, event: ev.MemoryStoreRequested) -> None:
        await self.shared.remember(event)

    async def audit(self, event: ev.AuditEvent) -> None:
        await self.publisher.publish(event)
