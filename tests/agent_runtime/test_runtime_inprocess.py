"""The agent runtime in process, built by its bootstrap, on a real NATS: turns taken from
the work queue, streamed straight from the worker when nothing is done to the output,
screened through the output window otherwise, and the input passthrough that a verdict
grants and a policy change ends.

Stand-ins on the same NATS play the guardrails, the router and one worker, so that each
answer is exact; the real ones run in tests/e2e and tests/guardrails."""

from __future__ import annotations

import asyncio
import secrets

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.context import RUNTIME_HEADER, WORKER_HEADER, RequestContext
from libs.events import (
    ChatMessage,
    ChatRequested,
    Delta,
    GenerateAccepted,
    GenerateRequest,
    GuardrailCheck,
    GuardrailVerdict,
    RouteReply,
    RouteRequest,
    TurnEvent,
    TurnLogged,
)
from libs.learning_optins import LearningOptIns
from libs.rpc import ReplyRouter, serve
from libs.service import running
from libs.settings import Settings
from libs.subjects import Subjects
from services.agent_runtime.bootstrap import Runtime, build


class StandIns:
    """Guardrails, router and a worker of pool `p` that answers "Hello, world"."""

    def __init__(self, nc: NatsClient, settings: Settings) -> None:
        self.nc = nc
        self.subjects = settings.subjects
        self.asked: list[tuple[str, str]] = []  # (direction, tenant)
        self.generated: list[GenerateRequest] = []

    async def start(self) -> None:
        s = self.subjects
        for subject in (s.guardrails_input, s.guardrails_output):
            await serve(self.nc, subject, GuardrailCheck, self.guard, queue="guardrails")
        await serve(self.nc, s.inference_route, RouteRequest, self.route, queue="router")
        await serve(self.nc, s.inference_worker("p"), GenerateRequest, self.generate, queue="p")

    async def guard(self, check: GuardrailCheck) -> GuardrailVerdict:
        self.asked.append((check.direction, check.ctx.tenant))
        open_tenant = check.ctx.tenant.startswith("open")
        return GuardrailVerdict(
            allowed=True,
            texts=[m.content or "" for m in check.messages],
            passthrough_s=60.0 if open_tenant and check.direction == "input" else 0.0,
            screen_output=not open_tenant,
        )

    async def route(self, request: RouteRequest) -> RouteReply:
        return RouteReply(pool="p", timeout_s=5.0)

    async def generate(self, request: GenerateRequest) -> GenerateAccepted:
        self.generated.append(request)

        async def stream() -> None:
            for event in (
                TurnEvent(deltas=[Delta(content="Hello, ")]),
                TurnEvent(deltas=[Delta(content="world", finish_reason="stop")], done=True),
            ):
                data = event.model_dump_json().encode()
                mark = {WORKER_HEADER: "w1"}
                if request.client_subject:
                    headers = {**request.client_headers, **mark}
                    await self.nc.publish(request.client_subject, data, headers=headers)
                await self.nc.publish(request.deltas_subject, data, headers=mark)

        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(stream()))
        return GenerateAccepted(accepted=True, worker="w1", timeout_s=request.timeout_s)


async def turn(
    nc: NatsClient, client: ReplyRouter, subjects: Subjects, tenant: str
) -> tuple[str, list[Msg]]:
    """One chat turn through the work queue, as the gateway sends it; its text and messages."""
    request_id = "r" + secrets.token_hex(4)
    inbox = client.open(request_id)
    event = ChatRequested(
        ctx=RequestContext(tenant=tenant, request_id=request_id),
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        reply_subject=inbox.subject,
    )
    await nc.jetstream().publish(subjects.chat_requested, event.model_dump_json().encode())
    got: list[Msg] = []
    text = ""
    while True:
        msg = await inbox.next(10.0)
        assert msg is not None, "the turn did not finish"
        got.append(msg)
        ev = TurnEvent.model_validate_json(msg.data)
        assert ev.error is None, ev.error
        text += "".join(d.content for d in ev.deltas)
        if ev.done:
            inbox.close()
            return text, got


async def test_the_runtime_runs_turns_from_its_bootstrap(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    settings = inprocess_settings.model_copy(update={"guard_passthrough_s": 60.0})
    stand_ins = StandIns(nc, settings)
    await stand_ins.start()
    client = await ReplyRouter(nc, settings.subjects.chat_stream("gw1", "")).start()
    logged: list[TurnLogged] = []

    async def keep(msg: Msg) -> None:
        logged.append(TurnLogged.model_validate_json(msg.data))

    await nc.subscribe(settings.subjects.trainer_turns, cb=keep)
    # Tenant "strict" opted in to learning from feedback (what the trainer writes).
    await LearningOptIns(nc, settings.subjects).set("strict", True)
    async with running(settings, "agent_runtime", build) as service:
        assert isinstance(service, Runtime)
        assert service.optins is not None and service.optins.opted_in("strict")
        assert not service.optins.opted_in("open")
        # Output screened: the runtime relays through the window, naming both replicas.
        text, got = await turn(nc, client, settings.subjects, "strict")
        assert text == "Hello, world"
        # The finished turn as screened goes to the trainer (learning from feedback).
        for _ in range(100):
            if logged:
                break
            await asyncio.sleep(0.01)
        (entry,) = logged
        assert entry.ctx.tenant == "strict" and entry.answer == "Hello, world"
        assert entry.completion_id == "chatcmpl-" + entry.ctx.request_id
        assert entry.messages == [{"role": "user", "content": "hi"}]
        assert got[-1].headers is not None and got[-1].headers[WORKER_HEADER] == "w1"
        assert stand_ins.generated[-1].client_subject is None
        assert ("output", "strict") in stand_ins.asked

        # Nothing to do to the output: the worker streams to the client itself.
        text, got = await turn(nc, client, settings.subjects, "open")
        assert text == "Hello, world"
        assert stand_ins.generated[-1].client_subject is not None
        assert all(m.headers and m.headers.get(RUNTIME_HEADER) for m in got)
        # "open" did not opt in: its turn never goes to the trainer.
        await asyncio.sleep(0.2)
        assert [e.ctx.tenant for e in logged] == ["strict"]

        # The grant spares asking for that tenant's input, until a policy changes.
        before = stand_ins.asked.count(("input", "open"))
        await turn(nc, client, settings.subjects, "open")
        assert stand_ins.asked.count(("input", "open")) == before
        await nc.publish(settings.subjects.guardrails_policy_changed, b"")
        for _ in range(100):
            if not service.ports.passthrough.granted:
                break
            await asyncio.sleep(0.01)
        await turn(nc, client, settings.subjects, "open")
        assert stand_ins.asked.count(("input", "open")) == before + 1
