"""The runtime's input passthrough on the real bus: a verdict that grants it spares the
next checks of that tenant, and a policy change announced on the bus ends it at once.

The guardrails service's side (which policies grant it, the announcement) runs in
tests/guardrails/test_guardrails_e2e.py; here a responder on the real NATS stands in for
it so that the window can be long and the test exact."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg

from libs.bus import event_bytes
from libs.context import RequestContext
from libs.events import ChatMessage, GuardrailCheck, GuardrailVerdict
from libs.settings import Settings
from services.agent_runtime.app import NatsTurnPorts
from tests.infra import Infra


@pytest.fixture
async def nc(services: Infra) -> AsyncIterator[nats.aio.client.Client]:
    client = await nats.connect(services.nats_url)
    yield client
    await client.drain()


def check(tenant: str, text: str = "hello") -> GuardrailCheck:
    return GuardrailCheck(
        ctx=RequestContext(tenant=tenant, request_id="r" + secrets.token_hex(3)),
        direction="input",
        messages=[ChatMessage(role="user", content=text)],
    )


async def test_granted_passthrough_spares_asking_until_a_policy_change(
    nc: nats.aio.client.Client,
) -> None:
    settings = Settings(bus_prefix="t" + secrets.token_hex(4), guard_passthrough_s=60.0)
    subjects = settings.subjects
    asked: list[str] = []

    async def guardrails(msg: Msg) -> None:
        seen = GuardrailCheck.model_validate_json(msg.data)
        asked.append(seen.ctx.tenant)
        grant = 60.0 if seen.ctx.tenant == "open" else 0.0
        verdict = GuardrailVerdict(
            allowed=True, texts=[m.content or "" for m in seen.messages], passthrough_s=grant
        )
        await msg.respond(event_bytes(verdict))

    await nc.subscribe(subjects.guardrails_input, cb=guardrails)
    await nc.subscribe(subjects.guardrails_output, cb=guardrails)
    ports = NatsTurnPorts(settings, nc, "rt" + secrets.token_hex(3))
    await ports.subscribe()
    await nc.flush()

    first = await ports.guard(subjects.guardrails_input, check("open"))
    second = await ports.guard(subjects.guardrails_input, check("open", "another text"))
    assert first.allowed and second.allowed and second.texts == ["another text"]
    assert asked == ["open"]  # the second was not asked
    # Another tenant's grant is its own; a tenant without one is always asked.
    await ports.guard(subjects.guardrails_input, check("strict"))
    await ports.guard(subjects.guardrails_input, check("strict"))
    assert asked == ["open", "strict", "strict"]
    # Output checks are never spared.
    await ports.guard(subjects.guardrails_output, check("open"))
    assert asked == ["open", "strict", "strict", "open"]

    await nc.publish(subjects.guardrails_policy_changed, b"")
    await nc.flush()
    for _ in range(100):
        if not ports.passthrough:
            break
        await asyncio.sleep(0.01)
    await ports.guard(subjects.guardrails_input, check("open"))
    assert asked == ["open", "strict", "strict", "open", "open"]
