"""Tool calling end to end: the official openai SDK (strict response validation) through the
real gateway, runtime (input and output guardrails), router and workers as processes.

The echo pool is the scripted model: it repeats the user's message, and with `tools` the
worker parses what it repeats as a model's own output, so a `<tool_call>` block in the
message comes back as a call. SmolLM2 runs a forced (named) tool choice under its grammar.
A configured agent (`model: agent:<name>`) runs its tool in the real sandbox service.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

import jsonschema
import openai
import pytest
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionNamedToolChoiceParam,
)

from tests.conftest import _platform
from tests.infra import Infra, Platform

ECHO = "enclave-echo"
SMOL = "smollm2-135m-instruct"
WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
PARAMETERS = WEATHER["function"].get("parameters")
SCRIPTED = (
    'Checking now. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
)


def named(function: str) -> ChatCompletionNamedToolChoiceParam:
    return {"type": "function", "function": {"name": function}}


@pytest.fixture(scope="module")
def plat(services: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    plat = _platform(services, tmp_path_factory.mktemp("tools-platform"))
    try:
        plat.launch(["echo", "smollm2"], ["sandbox"], [ECHO, SMOL])
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


def test_a_call_comes_back_whole(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=ECHO, messages=[{"role": "user", "content": SCRIPTED}], tools=[WEATHER]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking now. "
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}


def test_a_call_streams_as_openai_streams_it(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=ECHO,
        messages=[{"role": "user", "content": SCRIPTED}],
        tools=[WEATHER],
        tool_choice="auto",
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    pieces = [p for c in chunks for p in c.choices[0].delta.tool_calls or []]
    assert text == "Checking now. "
    assert pieces[0].index == 0 and pieces[0].id and pieces[0].type == "function"
    assert pieces[0].function is not None and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_result_goes_back_in_a_tool_message(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=ECHO, messages=[{"role": "user", "content": SCRIPTED}], tools=[WEATHER]
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    said = cast(ChatCompletionMessageParam, first.choices[0].message.model_dump(exclude_none=True))
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": SCRIPTED},
        said,
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 4}'},
        {"role": "user", "content": "Thanks, that is all."},
    ]
    reply = client.chat.completions.create(model=ECHO, tools=[WEATHER], messages=messages)
    assert reply.choices[0].message.content == "Thanks, that is all."
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls


def test_tool_choice_none_leaves_the_text_alone(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=ECHO,
        messages=[{"role": "user", "content": SCRIPTED}],
        tools=[WEATHER],
        tool_choice="none",
    )
    assert reply.choices[0].message.content == SCRIPTED
    assert not reply.choices[0].message.tool_calls


def test_a_tool_choice_naming_no_tool_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=ECHO,
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER],
            tool_choice=named("launch"),
        )
    body: Any = err.value.body
    assert body["param"] == "tool_choice" and "launch" in body["message"]


@pytest.mark.slow
def test_smollm2_under_a_named_choice_calls_it(client: openai.OpenAI) -> None:
    """The real model, forced: its answer is a call of the named function whose arguments
    fit the schema (the grammar admits nothing else); cut answers say `length`."""
    done = 0
    started = time.monotonic()
    for seed in range(4):
        reply = client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": "What is the weather like in Paris today?"}],
            tools=[WEATHER],
            tool_choice=named("get_weather"),
            max_tokens=48,
            seed=seed,
        )
        choice = reply.choices[0]
        if choice.finish_reason == "length":
            continue
        assert choice.finish_reason == "tool_calls", choice
        [call] = choice.message.tool_calls or []
        assert call.type == "function" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS)
        done += 1
        if done == 2 or time.monotonic() - started > 240:
            break
    assert done >= 1


def test_a_configured_agent_runs_through_the_gateway(plat: Platform, client: openai.OpenAI) -> None:
    """The echo model repeats its call at every step, so the agent runs the code in the
    sandbox service each time until its step limit stops it, and says so."""
    folder = plat.home / "agents" / "acme"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calc.yaml").write_text(
        f"model: {ECHO}\ntools: [code_execution]\nlimits: {{max_steps: 2}}\n"
    )
    code = (
        '<tool_call>{"name": "code_execution", "arguments": {"code": "print(6 * 7)"}}</tool_call>'
    )
    reply = client.chat.completions.create(
        model="agent:calc", messages=[{"role": "user", "content": code}]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == (
        "[The agent stopped: the agent took its 2 steps without answering.]"
    )
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="agent:nobody", messages=[{"role": "user", "content": "hi"}]
        )
