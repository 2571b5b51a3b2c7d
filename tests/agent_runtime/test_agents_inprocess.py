"""An agent turn through the runtime its bootstrap builds, on a real NATS: `model:
agent:<name>` from the work queue, a tool call run in the real bubblewrap sandbox behind
`sandbox.exec`, a Delegate child turn over `agent.delegate`, every call audited on the
bus. Stand-ins play the guardrails, the router and a scripted worker."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

from nats.aio.client import Client as NatsClient

from libs.context import RequestContext
from libs.events import (
    ChatMessage,
    ChatRequested,
    Delta,
    FunctionCall,
    GenerateAccepted,
    GenerateRequest,
    SandboxExecReply,
    SandboxExecRequest,
    ToolCall,
    TurnEvent,
    Usage,
)
from libs.rpc import ReplyRouter, serve
from libs.service import running
from libs.settings import Settings
from libs.tool_calls import call_deltas
from services.agent_runtime.bootstrap import Runtime, build
from services.sandbox.adapters.bwrap import BwrapBackend
from services.sandbox.executor import execute
from tests.agent_runtime.test_runtime_inprocess import StandIns as RuntimeStandIns
from tests.infra import audit_events
from tests.sandbox.conftest import LIMITS


def _answer(request: GenerateRequest) -> Delta:
    """The scripted models: the coder runs code, then asks the checker, then answers."""
    said = request.messages[-1]
    if request.model == "checker-m":
        return Delta(content="Checked: correct.", finish_reason="stop")
    if said.role == "user":
        code = {"code": "print(6 * 7)"}
        return _call(
            ToolCall(
                id="c1", function=FunctionCall(name="code_execution", arguments=json.dumps(code))
            )
        )
    result = json.loads(said.content or "{}")
    if "stdout" in result:
        task = {"agent": "checker", "task": f"Is 6 * 7 = {result['stdout'].strip()}?"}
        return _call(
            ToolCall(id="c2", function=FunctionCall(name="delegate", arguments=json.dumps(task)))
        )
    return Delta(content=f"It is 42. {result['output']}", finish_reason="stop")


def _call(call: ToolCall) -> Delta:
    return Delta(tool_calls=call_deltas([call], 0), finish_reason="tool_calls")


class StandIns(RuntimeStandIns):
    """The runtime test's guardrails and router; a scripted worker; the real sandbox."""

    def __init__(self, nc: NatsClient, settings: Settings, backend: BwrapBackend) -> None:
        super().__init__(nc, settings)
        self.backend = backend
        self.executed: list[SandboxExecRequest] = []

    async def start(self) -> None:
        await super().start()
        await serve(
            self.nc,
            self.subjects.sandbox_exec,
            SandboxExecRequest,
            self.sandbox,
            queue="sandbox",
            concurrent=True,
        )

    async def sandbox(self, request: SandboxExecRequest) -> SandboxExecReply:
        self.executed.append(request)
        return await execute(request, self.backend, LIMITS)

    async def generate(self, request: GenerateRequest) -> GenerateAccepted:
        self.generated.append(request)
        event = TurnEvent(deltas=[_answer(request)], usage=Usage(prompt_tokens=10), done=True)

        async def stream() -> None:
            await self.nc.publish(request.deltas_subject, event.model_dump_json().encode())

        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(stream()))
        return GenerateAccepted(accepted=True, worker="w1", timeout_s=request.timeout_s)


async def agent_turn(
    nc: NatsClient, settings: Settings, client: ReplyRouter, model: str, content: str
) -> tuple[str, str]:
    """A chat turn of tenant acme on `model`, through the work queue, read to its end:
    its request id and the text the client got."""
    request_id = "r" + secrets.token_hex(4)
    inbox = client.open(request_id)
    event = ChatRequested(
        ctx=RequestContext(tenant="acme", request_id=request_id),
        model=model,
        messages=[ChatMessage(role="user", content=content)],
        reply_subject=inbox.subject,
    )
    await nc.jetstream().publish(settings.subjects.chat_requested, event.model_dump_json().encode())
    text = ""
    while True:
        msg = await inbox.next(60.0)
        assert msg is not None, "the agent turn did not finish"
        ev = TurnEvent.model_validate_json(msg.data)
        assert ev.error is None, ev.error
        text += "".join(d.content for d in ev.deltas)
        if ev.done:
            return request_id, text


async def test_an_agent_turn_runs_code_and_delegates_over_the_bus(
    nc: NatsClient, inprocess_settings: Settings, backend: BwrapBackend, tmp_path: Path
) -> None:
    settings = inprocess_settings
    agents = settings.home / "agents" / "acme"
    agents.mkdir(parents=True)
    (agents / "coder.yaml").write_text(
        "model: coder-m\ntools: [code_execution]\nsubagents: [checker]\n"
    )
    (agents / "checker.yaml").write_text("model: checker-m\ndescription: Checks results.\n")
    stand_ins = StandIns(nc, settings, backend)
    await stand_ins.start()
    audited = (await audit_events(nc, settings.subjects.audit_all)).events
    client = await ReplyRouter(nc, settings.subjects.chat_stream("gw1", "")).start()
    async with running(settings, "agent_runtime", build) as service:
        assert isinstance(service, Runtime)
        request_id, text = await agent_turn(nc, settings, client, "agent:coder", "What is 6 * 7?")
        assert text == "It is 42. Checked: correct."
        [ran] = stand_ins.executed
        assert ran.tool == "code_execution" and ran.ctx.request_id == request_id
        models = [(g.model, g.ctx.request_id) for g in stand_ins.generated]
        assert models == [
            ("coder-m", request_id),
            ("coder-m", request_id),
            ("checker-m", request_id),  # the child turn: the parent's request id
            ("coder-m", request_id),
        ]
        for _ in range(200):
            if len([e for e in audited if e.action == "tool.call"]) >= 2:
                break
            await asyncio.sleep(0.02)
        calls = [
            (e.attrs["tool"], e.outcome, e.request_id) for e in audited if e.action == "tool.call"
        ]
        assert calls == [("code_execution", "ok", request_id), ("delegate", "ok", request_id)]
