"""Pseudonyms that stay true, on the real platform (gateway, runtime, guardrails, memory,
the echo worker): a fact holding a name and a number, said in one conversation, is stored
with its real values (never a dangling `<PERSON_1>`), is shown to the model of a later
conversation only as placeholders, and comes back right to the user who said it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest

from libs.rpc import settled
from tests.infra import Platform

ECHO = "enclave-echo"
NAME = "Maria Garcia"
PHONE = "+1 415 555 0132"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def nc(platform: Platform) -> AsyncIterator[nats.aio.client.Client]:
    client = await nats.connect(platform.env["ENCLAVE_NATS_URL"])
    yield client
    await client.drain()


async def chat(platform: Platform, key: str, text: str, conversation: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=platform.base_url, timeout=120) as http:
        r = await http.post(
            "/v1/chat/completions",
            headers=auth(key),
            json={
                "model": ECHO,
                "messages": [{"role": "user", "content": text}],
                "memory": {"enabled": True, "conversation_id": conversation},
            },
        )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def memories(platform: Platform, key: str, word: str, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=platform.base_url, timeout=30) as http:
        while time.monotonic() < deadline:
            data = (await http.get("/v1/memories", headers=auth(key))).json()["data"]
            if any(word in m["text"] for m in data):
                return data  # type: ignore[no-any-return]
            await asyncio.sleep(0.5)
    raise AssertionError(f"no memory with {word!r}:\n{platform.logs()[-3000:]}")


async def test_a_fact_with_a_name_and_a_number_comes_back_right_in_a_later_conversation(
    platform: Platform, nc: nats.aio.client.Client
) -> None:
    key = platform.create_key("pseudo-a", "user")
    other = platform.create_key("pseudo-b", "user")
    seen: list[dict[str, Any]] = []

    async def on_generate(msg: nats.aio.msg.Msg) -> None:
        seen.append(json.loads(msg.data))

    await nc.subscribe(
        f"{platform.env['ENCLAVE_BUS_PREFIX']}.inference.worker.echo", cb=on_generate
    )
    await settled(nc)

    said = f"My accountant is called {NAME}, her phone number is {PHONE}."
    first = await chat(platform, key, said, "pseudo-1")
    assert first["choices"][0]["message"]["content"] == said  # the echo, restored
    assert NAME not in json.dumps(seen[-1]) and PHONE not in json.dumps(seen[-1])

    # Stored true: the real values, no placeholder that would mean nothing later.
    stored = await memories(platform, key, "accountant")
    texts = [m["text"] for m in stored]
    assert any(NAME in t and PHONE in t for t in texts), texts
    assert not any("<PERSON" in t or "<PHONE_NUMBER" in t for t in texts), texts

    # A later conversation recalls it: the user reads the real values...
    later = await chat(platform, key, "Who is my accountant and what is her number?", "pseudo-2")
    recalled = [m["text"] for m in later["memories"]]
    assert any(NAME in t and PHONE in t for t in recalled), recalled
    # ...while the model was given the memory as placeholders only.
    context = seen[-1]["messages"][0]["content"]
    assert "accountant" in context and NAME not in context and PHONE not in context
    assert "<PERSON_1>" in context and "<PHONE_NUMBER_1>" in context

    # The model's answer, written with those placeholders (the echo worker stands in for a
    # model answering from its context), reaches the user with the real values; the first
    # conversation's buffer (real values in Redis) is screened the same way.
    answer = await chat(platform, key, "She is <PERSON_1>, call <PHONE_NUMBER_1>.", "pseudo-1")
    assert answer["choices"][0]["message"]["content"] == f"She is {NAME}, call {PHONE}."
    context = seen[-1]["messages"][0]["content"]
    assert "Earlier in this conversation" in context
    assert NAME not in context and PHONE not in context

    # Only for its user: another user's conversation recalls none of it.
    stranger = await chat(platform, other, "Who is my accountant?", "pseudo-1")
    assert NAME not in json.dumps(stranger) and PHONE not in json.dumps(stranger)
