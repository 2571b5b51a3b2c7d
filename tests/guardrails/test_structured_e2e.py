"""Structure-aware output screening on the real platform: json_object / json_schema answers
and tool-call arguments are checked as JSON documents by guardrails.output (rewritten inside
string values only), with the default policy's output screening on, through the gateway,
the runtime, the bus and a worker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jsonschema
import nats
import pytest

from tests.conftest import _platform
from tests.guardrails.test_guardrails_e2e import BusTap, auth, tap
from tests.infra import Infra, Platform

ECHO = "enclave-echo"
CHAT = "smollm2-135m-instruct"
SCHEMA = {
    "type": "object",
    "properties": {
        "a": {"type": "integer"},
        "city": {"type": "string"},
        "contact": {"type": "string"},
    },
    "required": ["a", "city", "contact"],
    "additionalProperties": False,
}
PROMPTS = [
    "Give a number, the city you like best and a contact email and phone there, as JSON.",
    "Reply with JSON: a is 1 and city is Paris, France. Then tell me a story about it.",
    "Invent a company in Rotterdam: its staff count, city, and who to call, with a number.",
]


@pytest.fixture(scope="module")
def platform(services: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Only the services these turns go through (fewer processes than the whole platform,
    so a loaded test machine still starts them), under the packaged default policy."""
    plat = _platform(
        services,
        tmp_path_factory.mktemp("structured-platform"),
        # A loaded 2-core test machine runs the small model slowly.
        ENCLAVE_UPSTREAM_TIMEOUT_S="240",
    )
    try:
        plat.launch(["echo", "smollm2"], models=[ECHO, CHAT])
        yield plat
    finally:
        plat.stop_all()


@pytest.fixture
async def nc(platform: Platform) -> AsyncIterator[nats.aio.client.Client]:
    client = await nats.connect(platform.env["ENCLAVE_NATS_URL"])
    yield client
    await client.drain()


async def post(platform: Platform, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=platform.base_url, timeout=300) as http:
        r = await http.post("/v1/chat/completions", headers=auth(platform.admin_key), json=body)
    assert r.status_code == 200, r.text
    return r


def answer_of(r: httpx.Response, stream: bool) -> tuple[str, str, list[dict[str, Any]]]:
    """(content, finish_reason, tool calls) of choice 0, streamed or not."""
    if not stream:
        choice = r.json()["choices"][0]
        message = choice["message"]
        return (
            message.get("content") or "",
            choice["finish_reason"],
            message.get("tool_calls") or [],
        )
    chunks = [
        json.loads(line[6:])
        for line in r.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    content, finish, calls = "", "", {}
    for c in chunks:
        for choice in c["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            finish = choice.get("finish_reason") or finish
            for piece in delta.get("tool_calls") or []:
                call = calls.setdefault(
                    piece["index"], {"id": "", "function": {"name": "", "arguments": ""}}
                )
                call["id"] = piece.get("id") or call["id"]
                fn = piece.get("function") or {}
                call["function"]["name"] = fn.get("name") or call["function"]["name"]
                call["function"]["arguments"] += fn.get("arguments") or ""
    return content, finish, [calls[i] for i in sorted(calls)]


def output_checks(seen: BusTap) -> list[dict[str, Any]]:
    return [json.loads(data) for _, data in seen.seen]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_json_answer_is_checked_whole_and_rewritten_inside_strings_only(
    platform: Platform, nc: nats.aio.client.Client, stream: bool
) -> None:
    checks = await tap(nc, platform, "guardrails.output")
    document = {"a": 7, "city": "Paris", "contact": "write to ada.lovelace@example.com"}
    said = json.dumps(document)
    r = await post(
        platform,
        {
            "model": ECHO,
            "messages": [{"role": "user", "content": said}],
            "response_format": {"type": "json_object"},
            "stream": stream,
        },
    )
    content, finish, _ = answer_of(r, stream)
    # The pseudonymised email (the model saw <EMAIL_ADDRESS_1>) is restored inside its
    # string, the number stays a number: the document the client gets parses as sent.
    assert finish == "stop" and json.loads(content) == document
    seen = output_checks(checks)
    mine = [c for c in seen if "<EMAIL_ADDRESS_1>" in c["messages"][0]["content"]]
    assert mine and all(c["structure"] == "json" for c in mine)
    # One check of the whole document, never a window of partial JSON.
    assert all(json.loads(c["messages"][0]["content"]) for c in mine)


async def test_a_json_answer_that_does_not_parse_is_blocked_with_the_reason(
    platform: Platform,
) -> None:
    r = await post(
        platform,
        {
            "model": ECHO,
            "messages": [{"role": "user", "content": '{ "a": 123, "city": "Paris, France}\n'}],
            "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
        },
    )
    content, finish, _ = answer_of(r, False)
    assert finish == "content_filter" and "output.structure" in content and "JSON" in content


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_arguments_are_checked_as_json_and_stay_valid(
    platform: Platform, nc: nats.aio.client.Client, stream: bool
) -> None:
    checks = await tap(nc, platform, "guardrails.output")
    arguments = {"to": "ada.lovelace@example.com", "count": 12, "note": 'say "hi"'}
    said = (
        'Sending now. <tool_call>{"name": "send_mail", "arguments": '
        + json.dumps(arguments)
        + "}</tool_call>"
    )
    tool = {
        "type": "function",
        "function": {
            "name": "send_mail",
            "parameters": {
                "type": "object",
                "properties": {
                    "to": {"type": "string"},
                    "count": {"type": "integer"},
                    "note": {"type": "string"},
                },
            },
        },
    }
    r = await post(
        platform,
        {
            "model": ECHO,
            "messages": [{"role": "user", "content": said}],
            "tools": [tool],
            "stream": stream,
        },
    )
    _, finish, calls = answer_of(r, stream)
    assert finish == "tool_calls" and len(calls) == 1
    assert calls[0]["function"]["name"] == "send_mail"
    assert json.loads(calls[0]["function"]["arguments"]) == arguments
    argument_checks = [c for c in output_checks(checks) if '"to"' in c["messages"][0]["content"]]
    assert argument_checks and all(c["structure"] == "json" for c in argument_checks)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ≈ 50 generations of ≤ 48 tokens on a loaded 2-core machine
async def test_json_schema_answers_parse_and_validate_with_output_screening_on_over_50_seeds(
    platform: Platform, nc: nats.aio.client.Client
) -> None:
    checks = await tap(nc, platform, "guardrails.output")
    finishes: list[str] = []
    for seed in range(50):
        stream = seed % 2 == 1
        r = await post(
            platform,
            {
                "model": CHAT,
                "messages": [{"role": "user", "content": PROMPTS[seed % len(PROMPTS)]}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
                },
                "temperature": 1.0,
                "seed": seed,
                "max_tokens": 64,
                "stream": stream,
            },
        )
        content, finish, _ = answer_of(r, stream)
        finishes.append(finish)
        if finish == "length":
            continue  # cut by the token limit, and said so
        assert finish == "stop", (seed, finish, content)
        jsonschema.validate(json.loads(content), SCHEMA)
    assert finishes.count("stop") >= 40, finishes
    # The default policy screens output: every one of them was checked as a JSON document.
    json_checks = [c for c in output_checks(checks) if c["structure"] == "json"]
    assert len(json_checks) >= finishes.count("stop")
