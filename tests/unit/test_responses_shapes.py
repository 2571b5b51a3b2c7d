"""The Responses API's pure shapes (services/gateway/responses_shapes.py): input items to
chat messages, the turn a request becomes, and the output items and events of a turn,
validated against the openai SDK's own models."""

from __future__ import annotations

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import Delta, NamedToolChoice, ToolCallDelta, ToolStep, Usage
from services.gateway.responses_shapes import (
    Builder,
    ResponsesRequest,
    input_messages,
    response_json,
    step_item,
    to_event,
)

CTX = RequestContext(tenant="acme", request_id="req-0123456789abcdef01234567")
EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


def request(**fields: object) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", **fields})


def test_input_items_become_chat_messages() -> None:
    messages = input_messages(
        [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "message", "role": "assistant", "content": "let me look"},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "one"},
            {"type": "function_call_output", "call_id": "call_2", "output": "two"},
        ]
    )
    assert [m.role for m in messages] == ["user", "assistant", "tool", "tool"]
    assert messages[1].content == "let me look"
    assert [c.id for c in messages[1].tool_calls or []] == ["call_1", "call_2"]
    assert (messages[3].tool_call_id, messages[3].content) == ("call_2", "two")


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([{"type": "input_image", "image_url": "x"}], "input[0].type"),
        ([{"role": "user", "content": [{"type": "input_file"}]}], "input[0][0].type"),
        ([{"type": "function_call_output", "output": "x"}], "input[0]"),
    ],
)
def test_unsupported_input_is_a_400_naming_it(items: list[dict[str, object]], param: str) -> None:
    with pytest.raises(EnclaveError) as err:
        input_messages(items)
    assert err.value.info.status == 400 and err.value.info.param == param


def test_a_request_becomes_a_chat_turn_with_instructions_and_tools() -> None:
    req = request(
        input="weather?",
        instructions="Be brief.",
        tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=20,
    )
    history = input_messages("earlier")
    event, conversation = to_event(req, CTX, history)
    assert [m.role for m in event.messages] == ["system", "user", "user"]
    assert [m.content for m in conversation] == ["earlier", "weather?"]
    assert event.params.max_tokens == 20 and event.params.tools is not None
    assert isinstance(event.params.tool_choice, NamedToolChoice)
    with pytest.raises(EnclaveError) as err:
        to_event(request(input="x", tools=[{"type": "web_search"}]), CTX, [])
    assert err.value.info.param == "tools[0].type"
    with pytest.raises(EnclaveError) as err:
        to_event(request(input="x", tool_choice={"type": "function", "name": "nope"}), CTX, [])
    assert err.value.info.param == "tool_choice"


def test_the_builder_emits_openai_events_and_a_valid_response() -> None:
    builder = Builder()
    events = builder.steps([ToolStep(call_id="call_a", name="code_execution", output="42")])
    events += builder.add([Delta(content="Checking "), Delta(content="now.")])
    events += builder.add(
        [
            Delta(
                tool_calls=[ToolCallDelta(index=0, id="call_x", name="f", arguments='{"a"')],
            ),
            Delta(
                tool_calls=[ToolCallDelta(index=0, arguments=": 1}")], finish_reason="tool_calls"
            ),
        ]
    )
    events += builder.finish()
    for ev in events:
        EVENTS.validate_python(ev)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.output_item.added",
        "response.mcp_call.completed",
        "response.output_item.done",
        "response.output_item.added",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [i["type"] for i in builder.output] == ["mcp_call", "message", "function_call"]
    assert builder.output[2]["arguments"] == '{"a": 1}'
    body = response_json("resp_1", request(input="x"), 1.0, "completed", builder.output, Usage())
    parsed = Response.model_validate(body)
    assert parsed.output_text == "Checking now."
    [said] = builder.conversation()
    assert said.content == "Checking now." and said.tool_calls and said.tool_calls[0].id == "call_x"


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="prompt"):
        request(input="x", prompt={"id": "p"})
    with pytest.raises(ValueError, match=r"file_search_call\.results"):
        request(input="x", include=["file_search_call.results"])


def test_an_mcp_servers_tool_is_labelled_with_its_server() -> None:
    mcp = ToolStep(call_id="call_1", name="mcp__fx__add", arguments="{}", output="5")
    own = ToolStep(call_id="call_2", name="code_execution", arguments="{}", output="{}")
    assert step_item(mcp)["server_label"] == "fx" and step_item(mcp)["name"] == "mcp__fx__add"
    assert step_item(own)["server_label"] == "enclave"
    waiting = mcp.model_copy(update={"approval_id": "apr_1", "outcome": "awaiting_approval"})
    assert step_item(waiting)["server_label"] == "fx"
