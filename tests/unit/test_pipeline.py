"""The turn pipeline against in-memory ports: relays, errors and timeouts reach the client."""

from __future__ import annotations

import asyncio

from libs.context import RequestContext
from libs.errors import model_not_found
from libs.events import (
    ChatMessage,
    ChatRequested,
    Delta,
    GenerateAccepted,
    GenerateRequest,
    GuardrailCheck,
    GuardrailVerdict,
    RagOptions,
    RetrieveReply,
    RetrieveRequest,
    TurnEvent,
)
from libs.subjects import Subjects
from services.agent_runtime.pipeline import run_turn


class FakeSource:
    subject = "p.inference.deltas.rt1.r1-x"
    worker = "w1"

    def __init__(self, events: list[TurnEvent]) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        for e in events:
            self.queue.put_nowait(e.model_dump_json().encode())
        self.closed = False

    async def next(self, timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        self.closed = True


class FakePorts:
    def __init__(self, accepted: GenerateAccepted, events: list[TurnEvent]) -> None:
        self.accepted = accepted
        self.source = FakeSource(events)
        self.emitted: list[tuple[str, TurnEvent]] = []
        self.headers: list[dict[str, str]] = []
        self.checks: list[GuardrailCheck] = []
        self.screen_output = True
        self.requests: list[GenerateRequest] = []
        self.retrieved: list[RetrieveRequest] = []

    async def open_deltas(self, request_id: str) -> FakeSource:
        return self.source

    async def request_generation(self, request: GenerateRequest) -> GenerateAccepted:
        self.requests.append(request)
        return self.accepted

    async def emit_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        assert headers["enclave-tenant"] == "acme"
        self.headers.append(headers)
        self.emitted.append((subject, TurnEvent.model_validate_json(data)))

    async def retrieve_context(self, request: RetrieveRequest) -> RetrieveReply:
        self.retrieved.append(request)
        return RetrieveReply(context="ctx")

    async def guard(self, subject: str, check: GuardrailCheck) -> GuardrailVerdict:
        # A guardrail that lets everything pass unchanged.
        self.checks.append(check)
        return GuardrailVerdict(
            allowed=True,
            texts=[m.content or "" for m in check.messages],
            screen_output=self.screen_output,
        )


EVENT = ChatRequested(
    ctx=RequestContext(tenant="acme", request_id="r1"),
    model="m",
    messages=[ChatMessage(role="user", content="hi")],
    reply_subject="p.chat.stream.gw1.r1",
)


async def test_deltas_are_relayed_to_the_request_subject() -> None:
    ports = FakePorts(
        GenerateAccepted(accepted=True, worker="w1"),
        [TurnEvent(deltas=[Delta(content="a")]), TurnEvent(done=True)],
    )
    await run_turn(EVENT, ports, Subjects("p"), 1.0, "rt1")
    subjects = {s for s, _ in ports.emitted}
    assert subjects == {"p.chat.stream.gw1.r1"}
    # The output guardrail's window holds a short answer back until the end of the turn.
    (done,) = (e for _, e in ports.emitted)
    assert done.deltas[0].content == "a" and done.done
    for headers in ports.headers:
        assert headers["enclave-runtime"] == "rt1" and headers["enclave-worker"] == "w1"
    assert ports.requests[0].deltas_subject == FakeSource.subject
    assert ports.source.closed


async def test_router_refusal_reaches_the_client() -> None:
    ports = FakePorts(GenerateAccepted(accepted=False, error=model_not_found("m")), [])
    ports.source = FakeSource([])
    await run_turn(EVENT, ports, Subjects(), 1.0)
    ((_, event),) = ports.emitted
    assert event.error is not None and event.error.status == 404 and event.done


async def test_silent_worker_times_out_with_504() -> None:
    ports = FakePorts(GenerateAccepted(accepted=True, worker="w", timeout_s=0.05), [])
    await run_turn(EVENT, ports, Subjects(), 10.0)
    assert ports.emitted[-1][1].error is not None
    assert ports.emitted[-1][1].error.status == 504


async def test_unscreened_output_is_relayed_as_it_comes() -> None:
    ports = FakePorts(
        GenerateAccepted(accepted=True, worker="w1"),
        [TurnEvent(deltas=[Delta(content="a")]), TurnEvent(done=True)],
    )
    ports.screen_output = False
    await run_turn(EVENT, ports, Subjects("p"), 1.0, "rt1")
    delta, done = (e for _, e in ports.emitted)
    assert delta.deltas[0].content == "a" and not delta.done and done.done
    assert [c.direction for c in ports.checks] == ["input"]


async def test_retrieval_gets_the_last_user_message_and_the_turns_before_it() -> None:
    said = [
        ChatMessage(role="system", content="Be brief."),
        *[
            ChatMessage(role="user" if i % 2 == 0 else "assistant", content=f"turn {i}")
            for i in range(6)
        ],
        ChatMessage(role="user", content="And what is its capital?"),
    ]
    event = EVENT.model_copy(update={"messages": said, "rag": RagOptions(collection="kb")})
    ports = FakePorts(GenerateAccepted(accepted=True, worker="w1"), [TurnEvent(done=True)])
    await run_turn(event, ports, Subjects("p"), 1.0, "rt1")
    (req,) = ports.retrieved
    assert req.query == "And what is its capital?"
    # The turns before it, for query rewriting: the last few, no system message.
    assert [m.content for m in req.history] == ["turn 2", "turn 3", "turn 4", "turn 5"]
