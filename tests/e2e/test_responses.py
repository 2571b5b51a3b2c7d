"""The Responses API end to end: the official openai SDK (strict response validation)
through the real gateway, runtime (input and output guardrails), router and a worker, as
processes.

The scripted model is the echo pool with `tool_results`: it repeats the user's message,
so a `<tool_call>` block in it comes back as a function call, and once the conversation
ends in a tool result it repeats that result as its answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import FunctionToolParam, ResponseFunctionToolCall

from tests.conftest import _platform
from tests.infra import Infra, Platform

MODEL = "enclave-echo-tools"
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
SCRIPTED = (
    'Checking now. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
)


@pytest.fixture(scope="module")
def plat(services: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    plat = _platform(services, tmp_path_factory.mktemp("responses-platform"))
    try:
        plat.launch(["echo-tools"], models=[MODEL])
        yield plat
    finally:
        plat.stop_all()


@pytest.fixture(scope="module")
def client(plat: Platform) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=plat.base_url + "/v1",
        api_key=plat.admin_key,
        _strict_response_validation=True,
        max_retries=0,
        timeout=300,
    )


def test_a_text_answer(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model=MODEL, input="Hello there", instructions="Be brief.", metadata={"k": "v"}
    )
    assert reply.object == "response" and reply.id.startswith("resp_")
    assert reply.status == "completed"
    assert reply.output_text == "Hello there"
    assert reply.instructions == "Be brief." and reply.metadata == {"k": "v"}
    assert reply.usage is not None and reply.usage.output_tokens > 0
    again = client.responses.retrieve(reply.id)
    assert again.output_text == "Hello there" and again.status == "completed"


def test_a_function_call_then_its_result_with_previous_response_id(
    client: openai.OpenAI,
) -> None:
    first = client.responses.create(model=MODEL, input=SCRIPTED, tools=[WEATHER])
    calls = [i for i in first.output if isinstance(i, ResponseFunctionToolCall)]
    assert [c.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].arguments) == {"city": "Oslo"}
    assert calls[0].call_id.startswith("call_") and first.output_text == "Checking now. "
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"c": 4}'}],
    )
    assert second.previous_response_id == first.id
    assert second.output_text == '{"c": 4}'
    assert not [i for i in second.output if i.type == "function_call"]


def test_the_whole_conversation_as_input_items(client: openai.OpenAI) -> None:
    """What the Agents SDK sends: no previous_response_id, every item again."""
    first = client.responses.create(model=MODEL, input=SCRIPTED, tools=[WEATHER])
    items: list[Any] = [{"role": "user", "content": SCRIPTED}]
    items += [i.model_dump(exclude_none=True) for i in first.output]
    call = next(i for i in first.output if isinstance(i, ResponseFunctionToolCall))
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny"})
    reply = client.responses.create(model=MODEL, input=items, tools=[WEATHER])
    assert reply.output_text == "sunny"


def test_streamed_events_in_openai_order(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model=MODEL, input=SCRIPTED, tools=[WEATHER], stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Checking now. "
    assert kinds.index("response.output_text.done") < kinds.index(
        "response.function_call_arguments.done"
    )
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"city": "Oslo"}
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Oslo"}
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == ["message", "function_call"]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == "completed" and [i.type for i in final.output] == [
        "message",
        "function_call",
    ]
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == "Checking now. "


def test_streamed_with_the_sdk_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="streamed hello") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == "streamed hello"


def test_unsupported_fields_are_a_400_naming_them(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    body: Any = err.value.body
    assert body["param"] == "tools[0].type"
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, input="hi", extra_body={"prompt": {"id": "pmpt_1"}})
    body = err.value.body
    assert body["param"] == "prompt"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nope")


def test_background_then_retrieve_and_cancel(plat: Platform, client: openai.OpenAI) -> None:
    started = client.responses.create(model=MODEL, input="in the background", background=True)
    assert started.status in ("queued", "in_progress")
    deadline = time.monotonic() + 60
    reply = started
    while reply.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.2)
        reply = client.responses.retrieve(started.id)
    assert reply.status == "completed" and reply.output_text == "in the background"
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(reply.id)  # finished: nothing to cancel
    plain = client.responses.create(model=MODEL, input="not background")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)
    # A slow background response, cancelled while it runs: the runtime stops its turn.
    slow = client.responses.create(
        model=MODEL, input="x" * 9000, background=True, max_output_tokens=3000
    )
    time.sleep(1)
    cancelled = client.responses.cancel(slow.id)
    assert cancelled.status == "cancelled"
    turn = "req-" + slow.id.removeprefix("resp_")
    deadline = time.monotonic() + 30
    while f"turn {turn} cancelled" not in plat.logs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert f"turn {turn} cancelled" in plat.logs()
    assert client.responses.retrieve(slow.id).status == "cancelled"


def test_another_tenant_cannot_read_a_response(plat: Platform, client: openai.OpenAI) -> None:
    reply = client.responses.create(model=MODEL, input="mine")
    other = plat.create_key("globex", "admin")
    r = httpx.get(
        f"{plat.base_url}/v1/responses/{reply.id}",
        headers={"Authorization": f"Bearer {other}"},
        timeout=30,
    )
    assert r.status_code == 404


async def test_the_openai_agents_sdk_runs_an_agent_with_a_function_tool(plat: Platform) -> None:
    """The OpenAI Agents SDK (PyPI `openai-agents`), unchanged, pointed at the gateway: the
    model calls the function, the SDK runs it here and sends the result back, and the
    model's answer (the scripted model repeats the result) is the run's final output."""
    agents = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    ran: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        ran.append(city)
        return f"Sunny in {city}"

    client = AsyncOpenAI(base_url=plat.base_url + "/v1", api_key=plat.admin_key, max_retries=0)
    agent = agents.Agent(
        name="weather",
        instructions="Answer with the weather.",
        tools=[get_weather],
        model=agents.OpenAIResponsesModel(model=MODEL, openai_client=client),
    )
    result = await agents.Runner.run(agent, SCRIPTED)
    assert ran == ["Oslo"]
    assert result.final_output == "Sunny in Oslo"
    streamed = agents.Runner.run_streamed(agent, SCRIPTED)
    kinds = [e.type async for e in streamed.stream_events()]
    assert "raw_response_event" in kinds and ran == ["Oslo", "Oslo"]
    assert streamed.final_output == "Sunny in Oslo"


def test_openapi_documents_the_request_bodies(plat: Platform) -> None:
    doc = httpx.get(plat.base_url + "/openapi.json", timeout=30).json()
    for path in ("/v1/responses", "/v1/skills", "/v1/approvals/{approval_id}"):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert ref["$ref"].rsplit("/", 1)[1] in doc["components"]["schemas"], path
    assert "/v1/responses/{response_id}/cancel" in doc["paths"]
