"""The turn pipeline against in-memory ports: relays, errors and timeouts reach the client."""

from __future__ import annotations

import asyncio

from libs.context import RequestContext
from libs.errors import EnclaveError, model_not_found, stage_lost, upstream_timeout
from libs.events import (
    ChatMessage,
    ChatRequested,
    Citation,
    Delta,
    GenerateAccepted,
    GenerateRequest,
    GroundedSentence,
    GroundReply,
    GroundRequest,
    GuardrailCheck,
    GuardrailVerdict,
    MemoryOptions,
    MemoryStoreRequested,
    RagOptions,
    RetrieveReply,
    RetrieveRequest,
    RouteReply,
    TurnEvent,
)
from services.agent_runtime.pipeline import Transcript, plan_turn, run_turn


class FakeGeneration:
    """The worker's events, or its acceptance's refusal, or silence (a 504)."""

    def __init__(self, accepted: GenerateAccepted, events: list[TurnEvent]) -> None:
        self.accepted = accepted
        self.events = list(events)
        self.closed = False

    async def next(self) -> TurnEvent:
        if not self.accepted.accepted:
            raise EnclaveError.of(self.accepted.error or model_not_found("m"))
        if not self.events:
            raise EnclaveError.of(upstream_timeout("no token from m in 0.05s"))
        await asyncio.sleep(0)
        return self.events.pop(0)

    def close(self) -> None:
        self.closed = True


class FakePorts:
    def __init__(self, accepted: GenerateAccepted, events: list[TurnEvent]) -> None:
        self.generation = FakeGeneration(accepted, events)
        self.emitted: list[TurnEvent] = []
        self.checks: list[GuardrailCheck] = []
        self.screen_output = True
        self.requests: list[GenerateRequest] = []
        self.direct: list[bool] = []
        self.retrieved: list[RetrieveRequest] = []

    def generate(self, request: GenerateRequest, route: RouteReply, direct: bool) -> FakeGeneration:
        self.requests.append(request)
        self.direct.append(direct)
        return self.generation

    async def send(self, event: TurnEvent) -> None:
        self.emitted.append(event)

    async def route(self, ctx: RequestContext, model: str, kind: str) -> RouteReply:
        return RouteReply(pool="p")

    async def ground(self, request: GroundRequest) -> GroundReply:
        raise AssertionError("no grounding check was asked for")

    async def retrieve(self, request: RetrieveRequest) -> RetrieveReply:
        self.retrieved.append(request)
        return RetrieveReply(context="ctx")

    async def remember(self, event: MemoryStoreRequested) -> None:
        raise AssertionError("nothing to remember")

    async def screen(self, check: GuardrailCheck) -> GuardrailVerdict:
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


async def test_deltas_are_relayed_to_the_client() -> None:
    ports = FakePorts(
        GenerateAccepted(accepted=True, worker="w1"),
        [TurnEvent(deltas=[Delta(content="a")]), TurnEvent(done=True)],
    )
    last = await run_turn(EVENT, ports)
    # The output guardrail's window holds a short answer back until the end of the turn.
    (done,) = ports.emitted
    assert done.deltas[0].content == "a" and done.done and last == done
    assert ports.direct == [False]
    assert ports.generation.closed


async def test_router_refusal_reaches_the_client() -> None:
    ports = FakePorts(GenerateAccepted(accepted=False, error=model_not_found("m")), [])
    await run_turn(EVENT, ports)
    (event,) = ports.emitted
    assert event.error is not None and event.error.status == 404 and event.done


async def test_silent_worker_times_out_with_504() -> None:
    ports = FakePorts(GenerateAccepted(accepted=True, worker="w", timeout_s=0.05), [])
    await run_turn(EVENT, ports)
    assert ports.emitted[-1].error is not None
    assert ports.emitted[-1].error.status == 504


async def test_unscreened_output_goes_straight_to_the_client() -> None:
    ports = FakePorts(
        GenerateAccepted(accepted=True, worker="w1"),
        [TurnEvent(deltas=[Delta(content="a")]), TurnEvent(done=True)],
    )
    ports.screen_output = False
    last = await run_turn(EVENT, ports)
    # Nothing to do to the output: the worker streams to the client itself and the
    # runtime only watched its copy; the outcome is the worker's last event.
    assert ports.direct == [True]
    assert ports.emitted == []
    assert last.done
    assert [c.direction for c in ports.checks] == ["input"]


async def test_a_silent_worker_still_times_out_when_it_streams_directly() -> None:
    ports = FakePorts(GenerateAccepted(accepted=True, worker="w", timeout_s=0.05), [])
    ports.screen_output = False
    await run_turn(EVENT, ports)
    (event,) = ports.emitted
    assert event.error is not None and event.error.status == 504


class RagPorts(FakePorts):
    """Retrieval that finds one chunk, and a grounding check that records what it got."""

    def __init__(self, events: list[TurnEvent], default: RagOptions | None = None) -> None:
        super().__init__(GenerateAccepted(accepted=True, worker="w1"), events)
        self.default = default
        self.grounded: list[GroundRequest] = []

    async def route(self, ctx: RequestContext, model: str, kind: str) -> RouteReply:
        return RouteReply(pool="p", rag=self.default)

    async def retrieve(self, request: RetrieveRequest) -> RetrieveReply:
        assert request.rag is not None and request.rag.collection == "kb"
        cite = Citation(index=1, chunk_id="c1", file_id="f1", quote="floor 3")
        return RetrieveReply(citations=[cite], context="[1] floor 3", chunks=["floor 3"])

    async def ground(self, request: GroundRequest) -> GroundReply:
        self.grounded.append(request)
        return GroundReply(
            sentences=[GroundedSentence(text="It is on floor 3.", supported=True, citation=1)]
        )


ANSWERED = [
    TurnEvent(deltas=[Delta(content="It is on ")]),
    TurnEvent(deltas=[Delta(content="floor 3.", finish_reason="stop")], done=True),
]


async def test_grounding_goes_out_before_the_last_event_screened_or_not() -> None:
    for screen in (False, True):
        ports = RagPorts(list(ANSWERED))
        ports.screen_output = screen
        asked = EVENT.model_copy(update={"rag": RagOptions(collection="kb", grounding=True)})
        await run_turn(asked, ports)
        (request,) = ports.grounded
        assert request.answers == {0: "It is on floor 3."}
        assert request.chunks == ["floor 3"] and request.citations == [1]
        events = ports.emitted
        at = next(i for i, e in enumerate(events) if e.grounding is not None)
        assert at == len(events) - 2 and events[-1].done and not events[at].done


async def test_a_models_rag_default_applies_unless_the_request_says_rag() -> None:
    ports = RagPorts(list(ANSWERED), default=RagOptions(collection="kb"))
    await run_turn(EVENT, ports)
    assert any(e.citations for e in ports.emitted)
    assert "floor 3" in (ports.requests[0].messages[0].content or "")
    assert not ports.grounded

    ports = RagPorts(list(ANSWERED), default=RagOptions(collection="kb"))
    opted_out = EVENT.model_copy(update={"rag": RagOptions(enabled=False)})
    await run_turn(opted_out, ports)
    assert not any(e.citations for e in ports.emitted)
    assert ports.requests[0].messages == EVENT.messages


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
    await run_turn(event, ports)
    (req,) = ports.retrieved
    assert req.query == "And what is its capital?"
    # The turns before it, for query rewriting: the last few, no system message.
    assert [m.content for m in req.history] == ["turn 2", "turn 3", "turn 4", "turn 5"]


def test_the_plan_follows_the_request_and_the_verdict() -> None:
    screened = GuardrailVerdict(allowed=True)
    unscreened = GuardrailVerdict(allowed=True, screen_output=False)
    plain = plan_turn(EVENT, unscreened)
    assert plain.direct and not plain.retrieve
    assert not plan_turn(EVENT, screened).direct
    grounded = EVENT.model_copy(update={"rag": RagOptions(collection="kb", grounding=True)})
    plan = plan_turn(grounded, unscreened)
    assert plan.rag and plan.ground and plan.retrieve and not plan.direct
    remembered = EVENT.model_copy(update={"memory": MemoryOptions()})
    plan = plan_turn(remembered, unscreened)
    assert plan.remember and plan.retrieve and not plan.direct
    # A completion neither retrieves nor remembers, whatever it says.
    completion = remembered.model_copy(update={"kind": "completion", "prompt": "x"})
    assert plan_turn(completion, unscreened).direct
    # A route with failover is relayed by the turn: a pool's early error never reaches
    # the client directly.
    assert not plan_turn(EVENT, unscreened, relay=True).direct


class RememberingPorts(FakePorts):
    def __init__(self, events: list[TurnEvent]) -> None:
        super().__init__(GenerateAccepted(accepted=True, worker="w1"), events)
        self.remembered: list[MemoryStoreRequested] = []

    async def remember(self, event: MemoryStoreRequested) -> None:
        self.remembered.append(event)


async def test_unscreened_output_with_memory_is_relayed_and_remembered() -> None:
    ports = RememberingPorts(list(ANSWERED))
    ports.screen_output = False
    remembered = EVENT.model_copy(update={"memory": MemoryOptions(conversation_id="c1")})
    last = await run_turn(remembered, ports)
    # Relayed event by event as the worker sent them (no window), after the context event.
    assert ports.direct == [False]
    assert ports.emitted[1:] == ANSWERED and last == ANSWERED[-1]
    (stored,) = ports.remembered
    assert stored.answer == "It is on floor 3." and stored.conversation_id == "c1"


class RedactingPorts(RememberingPorts):
    """An output guardrail that blocks any answer that says `hunter2`."""

    async def screen(self, check: GuardrailCheck) -> GuardrailVerdict:
        if check.direction == "output" and "hunter2" in (check.messages[0].content or ""):
            return GuardrailVerdict(allowed=False, rule="secrets", policy_version="1")
        return await super().screen(check)


async def test_the_conversation_buffer_keeps_the_screened_answer_not_the_raw_one() -> None:
    raw = [
        TurnEvent(deltas=[Delta(content="The password ")]),
        TurnEvent(deltas=[Delta(content="is hunter2.", finish_reason="stop")], done=True),
    ]
    ports = RedactingPorts(raw)
    remembered = EVENT.model_copy(update={"memory": MemoryOptions(conversation_id="c1")})
    await run_turn(remembered, ports)
    seen = "".join(d.content for e in ports.emitted for d in e.deltas if d.index == 0)
    (stored,) = ports.remembered
    assert "hunter2" not in stored.answer
    assert stored.answer == seen and "blocked by the guardrails rule `secrets`" in seen


class LosingPorts(FakePorts):
    """The first worker dies (silent: `worker_lost`) after `tokens` events; the next one of
    the pool answers."""

    def __init__(self, tokens: list[TurnEvent]) -> None:
        super().__init__(GenerateAccepted(accepted=True, worker="w1"), [])
        self.first = tokens

    def generate(self, request: GenerateRequest, route: RouteReply, direct: bool) -> FakeGeneration:
        self.requests.append(request)
        self.direct.append(direct)
        if len(self.requests) == 1:
            return LostGeneration(list(self.first))
        self.generation = FakeGeneration(
            GenerateAccepted(accepted=True, worker="w2"),
            [TurnEvent(deltas=[Delta(content="b")]), TurnEvent(done=True)],
        )
        return self.generation


class LostGeneration(FakeGeneration):
    def __init__(self, events: list[TurnEvent]) -> None:
        super().__init__(GenerateAccepted(accepted=True, worker="w1"), events)

    async def next(self) -> TurnEvent:
        if not self.events:
            raise EnclaveError.of(stage_lost("worker", "silent for 5s"))
        return self.events.pop(0)


async def test_a_worker_lost_before_its_first_token_is_replaced_by_another() -> None:
    ports = LosingPorts([])
    last = await run_turn(EVENT, ports)
    assert len(ports.requests) == 2
    assert last.done and last.error is None and last.deltas[0].content == "b"


async def test_a_worker_lost_after_a_token_ends_the_turn_with_its_error() -> None:
    ports = LosingPorts([TurnEvent(deltas=[Delta(content="a")])])
    ports.screen_output = False  # direct: the token went to the client already
    last = await run_turn(EVENT, ports)
    assert len(ports.requests) == 1  # never asked again: the client saw "a"
    assert last.error is not None and last.error.code == "worker_lost" and last.done
    assert ports.emitted == [last]


async def test_retries_are_bounded() -> None:
    class AlwaysLost(LosingPorts):
        def generate(self, request: GenerateRequest, route: RouteReply, d: bool) -> FakeGeneration:
            self.requests.append(request)
            return LostGeneration([])

    ports = AlwaysLost([])
    last = await run_turn(EVENT, ports, retries=1)
    assert len(ports.requests) == 2
    assert last.error is not None and last.error.code == "worker_lost"


class PseudonymPorts(RememberingPorts):
    """Input PII replaced by a placeholder; output screened and let through."""

    async def screen(self, check: GuardrailCheck) -> GuardrailVerdict:
        verdict = await super().screen(check)
        if check.direction == "input":
            texts = [t.replace("Ana Silva", "<PERSON_1>") for t in verdict.texts]
            return verdict.model_copy(
                update={"texts": texts, "pseudonyms": {"<PERSON_1>": "Ana Silva"}}
            )
        return verdict


async def test_the_buffer_keeps_what_the_user_saw_with_the_turns_mapping() -> None:
    """Memory and the buffer keep real values (services/memory/README.md, pseudonyms): the
    answer as the user saw it, the input as the model saw it, and the mapping between."""
    ports = PseudonymPorts(
        [
            TurnEvent(
                deltas=[Delta(content="Hello <PERSON_1>, nice to meet you.", finish_reason="stop")],
                done=True,
            )
        ]
    )
    said = [ChatMessage(role="user", content="I am Ana Silva.")]
    event = EVENT.model_copy(
        update={"messages": said, "memory": MemoryOptions(conversation_id="c1")}
    )
    await run_turn(event, ports)
    seen = "".join(d.content for e in ports.emitted for d in e.deltas)
    assert seen == "Hello Ana Silva, nice to meet you."  # the user sees their own name
    (stored,) = ports.remembered
    assert stored.answer == "Hello Ana Silva, nice to meet you."
    assert stored.messages[0].content == "I am <PERSON_1>."
    assert stored.pseudonyms == {"<PERSON_1>": "Ana Silva"}


async def test_the_transcript_for_learning_holds_the_screened_text_only() -> None:
    """The log of learning from feedback (events.TurnLogged): the input as the model saw
    it and the answer as shown with the real values replaced by placeholders again."""
    ports = PseudonymPorts(
        [
            TurnEvent(deltas=[Delta(content="Hello <PERSON_1>, ")]),
            TurnEvent(deltas=[Delta(content="nice to meet you.", finish_reason="stop")], done=True),
        ]
    )
    event = EVENT.model_copy(
        update={
            "messages": [ChatMessage(role="user", content="I am Ana Silva.")],
            "memory": MemoryOptions(conversation_id="c1"),
        }
    )
    transcript = Transcript()
    await run_turn(event, ports, transcript=transcript)
    assert transcript.messages == [{"role": "user", "content": "I am <PERSON_1>."}]
    assert transcript.text() == "Hello <PERSON_1>, nice to meet you."
    assert "Ana Silva" not in repr(transcript.messages) + transcript.text()

    # Straight from the worker (nothing done to the output): its copy is the answer.
    direct = FakePorts(
        GenerateAccepted(accepted=True, worker="w1"),
        [TurnEvent(deltas=[Delta(content="a"), Delta(index=1, content="b")]), TurnEvent(done=True)],
    )
    direct.screen_output = False
    watched = Transcript()
    await run_turn(EVENT, direct, transcript=watched)
    assert direct.direct == [True] and watched.text() == "a"
