"""A chat turn on a configured agent (services/agent_runtime/agent_turn.py): the agent loop
between the input and output guardrails, with a scripted engine."""

from __future__ import annotations

from libs.events import (
    ChatMessage,
    ChatRequested,
    FunctionCall,
    GenerateRequest,
    GenerationParams,
    GuardrailCheck,
    GuardrailEntity,
    GuardrailVerdict,
    ToolCall,
    TurnEvent,
    Usage,
)
from services.agent_runtime.agent_loop import StepReply
from services.agent_runtime.agent_turn import run_agent_turn
from services.agent_runtime.agents import AgentDefinition
from tests.agent_runtime.test_agent_loop import CTX, Ports, _forever, last, loop_of

AGENT = AgentDefinition(name="helper", model="m", guardrails="strict")


class TurnPorts(Ports):
    """Input: "Ada" becomes <PERSON_1>, "forbidden" is blocked; output: "secret" blocked,
    "0000" redacted."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.sent: list[TurnEvent] = []

    async def screen(self, check: GuardrailCheck) -> GuardrailVerdict:
        self.screened.append(check)
        text = check.messages[-1].content or ""
        if check.direction == "input":
            if "forbidden" in text:
                return GuardrailVerdict(allowed=False, rule="topic.deny", policy_version="p1")
            return GuardrailVerdict(
                allowed=True,
                texts=[(m.content or "").replace("Ada", "<PERSON_1>") for m in check.messages],
                pseudonyms={"<PERSON_1>": "Ada"},
            )
        if "secret" in text:
            return GuardrailVerdict(allowed=False, rule="secrets.block", policy_version="p1")
        spans = []
        if "0000" in text:
            start = text.index("0000")
            spans = [
                GuardrailEntity(
                    type="PIN",
                    start=start,
                    end=start + 4,
                    score=1.0,
                    action="redact",
                    replacement="<PIN>",
                )
            ]
        return GuardrailVerdict(allowed=True, texts=[text], entities=spans)

    async def send(self, event: TurnEvent) -> None:
        self.sent.append(event)


def _event(text: str, **params: object) -> ChatRequested:
    return ChatRequested(
        ctx=CTX,
        model="agent:helper",
        messages=[ChatMessage(role="user", content=text)],
        params=GenerationParams.model_validate(params),
    )


def _echo(request: GenerateRequest) -> StepReply:
    return StepReply(content=f"Hello {last(request).content}", usage=Usage(prompt_tokens=5))


async def test_the_agent_answers_between_the_guardrails() -> None:
    ports = TurnPorts({"m": _echo})
    out = await run_agent_turn(_event("Ada, PIN 0000"), AGENT, loop_of(ports), ports)
    # The model saw the placeholder; the client gets the real name and no PIN.
    assert last(ports.steps[0]).content == "<PERSON_1>, PIN 0000"
    assert ports.sent == [out] and out.done and out.usage == Usage(prompt_tokens=5)
    assert [(d.content, d.finish_reason) for d in out.deltas] == [("Hello Ada, PIN <PIN>", "stop")]
    assert [(c.direction, c.agent) for c in ports.screened] == [
        ("input", "strict"),
        ("output", "strict"),
    ]


async def test_blocked_input_reaches_no_model() -> None:
    ports = TurnPorts({"m": _echo})
    out = await run_agent_turn(_event("a forbidden topic"), AGENT, loop_of(ports), ports)
    assert ports.steps == [] and out.deltas[0].finish_reason == "content_filter"
    assert "topic.deny" in out.deltas[0].content


async def test_a_blocked_answer_is_not_sent() -> None:
    ports = TurnPorts({"m": lambda r: StepReply(content="the secret is out")})
    out = await run_agent_turn(_event("hi"), AGENT, loop_of(ports), ports)
    assert out.deltas[0].finish_reason == "content_filter"
    assert "secret is out" not in out.deltas[0].content


async def test_a_stopped_run_says_why() -> None:
    agent = AgentDefinition.model_validate(
        {"name": "helper", "model": "m", "tools": ["memory_write"], "limits": {"max_steps": 1}}
    )
    ports = TurnPorts({"m": _forever})
    out = await run_agent_turn(_event("x", user="u1"), agent, loop_of(ports), ports)
    [delta] = out.deltas
    assert delta.finish_reason == "length" and "The agent stopped: the agent took its 1 steps" in (
        delta.content
    )


async def test_client_fields_an_agent_cannot_honour_are_400s() -> None:
    ports = TurnPorts({"m": _echo})
    tool = {"type": "function", "function": {"name": "f"}}
    own = {"type": "function", "function": {"name": "load_skill"}}
    cases: list[tuple[dict[str, object], str]] = [
        ({"tools": [own]}, "tools"),
        ({"tools": [tool], "tool_choice": "required"}, "tool_choice"),
        ({"n": 2}, "n"),
    ]
    for params, param in cases:
        out = await run_agent_turn(_event("hi", **params), AGENT, loop_of(ports), ports)
        assert out.error is not None and (out.error.status, out.error.param) == (400, param)
    assert ports.steps == []


async def test_a_call_of_the_clients_own_function_ends_the_turn_with_it() -> None:
    """The client's `tools` are offered beside the agent's; the agent's call of one comes
    back as the turn's tool call (screened like any answer), for the client to run."""

    def script(request: GenerateRequest) -> StepReply:
        assert [t.function.name for t in request.params.tools or []] == ["lookup"]
        if last(request).role == "tool":
            return StepReply(content=f"Found {last(request).content}")
        return StepReply(
            content="Looking. ",
            tool_calls=[
                ToolCall(id="call_9", function=FunctionCall(name="lookup", arguments="{}"))
            ],
        )

    ports = TurnPorts({"m": script})
    tool = {"type": "function", "function": {"name": "lookup"}}
    out = await run_agent_turn(_event("find it", tools=[tool]), AGENT, loop_of(ports), ports)
    [delta] = out.deltas
    assert delta.finish_reason == "tool_calls" and delta.content == "Looking. "
    assert [(c.id, c.name) for c in delta.tool_calls or []] == [("call_9", "lookup")]
