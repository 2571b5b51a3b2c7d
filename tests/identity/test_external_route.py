"""External providers on the request path, with the platform's real processes (router, a
worker per provider pool, guardrails, runtime, gateway) in front of two stand-in
OpenAI-compatible providers on 127.0.0.1:

- off by default: a tenant whose admin has not enabled the provider gets 403
  `provider_not_enabled` and nothing reaches a provider;
- enabled (the admin API, with an allow-list): the provider receives the input only as the
  guardrails rewrote it (no name, no e-mail address), never the original;
- failover: the route lists two pools; when the first answers 500, or closes the
  connection without answering, the second answers and the client sees one clean answer;
- each call that left is audited (`external.call`: provider, pool, model, tokens,
  redactions), by digest;
- a tenant's own settings are used: its admin's base_url, key and model name send its
  requests to its own endpoint (a third stand-in), with its key, which crosses the bus
  only sealed; another tenant without the grant is refused.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest
import yaml
from nats.aio.msg import Msg

from libs.events import AuditActions, AuditEvent
from libs.secret_box import SecretBox
from libs.subjects import Subjects
from tests.conftest import _platform
from tests.identity.standin_provider import StandinProvider
from tests.infra import Infra, Platform

MODEL = "ext-chat"
PII = "Please write to John Smith at john.smith@example.com about the invoice."


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[StandinProvider, StandinProvider]]:
    with StandinProvider("a") as first, StandinProvider("b") as second:
        yield first, second


@pytest.fixture(scope="module")
def plat(
    services: Infra,
    tmp_path_factory: pytest.TempPathFactory,
    providers: tuple[StandinProvider, StandinProvider],
) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("external")
    plat = _platform(services, home)
    sealed = SecretBox.at(home).seal("sk-standin-123")
    registry = yaml.safe_load((home / "models.yaml").read_text())
    for name, provider in zip(("ext-a", "ext-b"), providers, strict=True):
        registry["pools"][name] = {
            "engine": "openai_compat",
            "provider": "standin",
            "model": "upstream-model",
            "base_url": provider.url,
            "api_key": sealed,
            "timeout_s": 10,
        }
    registry["models"].append({"id": MODEL, "kind": "chat", "pool": "ext-a", "fallback": ["ext-b"]})
    (home / "models.yaml").write_text(yaml.safe_dump(registry))
    try:
        for name, service, *pool in [
            ("router", "inference_router"),
            ("worker-a", "worker", "ext-a"),
            ("worker-b", "worker", "ext-b"),
            ("guardrails", "guardrails"),
            ("runtime", "agent_runtime"),
            ("gateway", "gateway"),
        ]:
            plat.start(name, service, *pool)
        plat.wait_ready(timeout=240)
        yield plat
    finally:
        plat.stop_all()


def _sent(provider: StandinProvider) -> str:
    return json.dumps([r["body"] for r in provider.received])


async def test_external_route_policy_redaction_failover_and_audit(
    plat: Platform, providers: tuple[StandinProvider, StandinProvider]
) -> None:
    first, second = providers
    admin = {"Authorization": f"Bearer {plat.admin_key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": PII}], "max_tokens": 20}
    nc = await nats.connect(plat.env["ENCLAVE_NATS_URL"])
    audited: list[AuditEvent] = []

    async def collect(msg: Msg) -> None:
        event = AuditEvent.model_validate_json(msg.data)
        if event.action == AuditActions.EXTERNAL_CALL:
            audited.append(event)

    sub = await nc.subscribe(Subjects(plat.env["ENCLAVE_BUS_PREFIX"]).audit_all, cb=collect)
    try:
        async with httpx.AsyncClient(base_url=plat.base_url, timeout=120) as http:
            # Off by default: refused, and nothing left.
            refused = await _chat_when_ready(http, admin, body)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "provider_not_enabled"
            assert first.received == [] and second.received == []

            grant = {  # no base_url nor key: the platform's pools of the provider serve
                "models": {MODEL: "upstream-model"},
                "allowed_models": [MODEL],
                "enabled": True,
            }
            r = await http.put("/v1/admin/providers/standin", headers=admin, json=grant)
            assert r.status_code == 201, r.text
            await asyncio.sleep(1.5)  # the router reads grants again after 1 s

            # Enabled; the first provider answers 500: the second answers, cleanly.
            first.mode = "500"
            answered = await http.post("/v1/chat/completions", headers=admin, json=body)
            assert answered.status_code == 200, answered.text
            assert answered.json()["choices"][0]["message"]["content"] == "Hello from b"
            assert len(first.received) == 1 and len(second.received) == 1
            # The first one dies without answering: the same, streamed this time.
            first.mode = "die"
            streamed = await http.post(
                "/v1/chat/completions", headers=admin, json={**body, "stream": True}
            )
            assert streamed.status_code == 200
            chunks = [
                json.loads(line[6:])
                for line in streamed.text.split("\n\n")
                if line.startswith("data: {")
            ]
            assert all("error" not in c for c in chunks), streamed.text
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
            )
            assert text == "Hello from b"
            assert streamed.text.rstrip().endswith("data: [DONE]")

            # What left the platform: the guardrails' rewrite only.
            for provider in providers:
                sent = _sent(provider)
                assert "John Smith" not in sent and "john.smith@example.com" not in sent, sent
                assert "invoice" in sent  # the rest of the message did go
                for r in provider.received:
                    headers = {k.lower(): v for k, v in r["headers"].items()}
                    assert headers["authorization"] == "Bearer sk-standin-123"  # unsealed
        for _ in range(100):
            if len(audited) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(audited) == 2
        for event in audited:
            assert event.attrs["provider"] == "standin" and event.attrs["pool"] == "ext-b"
            assert event.model == MODEL and event.attrs["redactions"] >= 2
            assert event.attrs["prompt_tokens"] == 7 and event.attrs["completion_tokens"] == 3
            assert "sent" in event.digests
    finally:
        await sub.unsubscribe()
        await nc.close()


async def test_a_tenants_own_endpoint_key_and_model_are_used(
    plat: Platform, providers: tuple[StandinProvider, StandinProvider]
) -> None:
    admin = {"Authorization": f"Bearer {plat.admin_key}"}
    other = {"Authorization": f"Bearer {plat.create_key('globex', 'admin')}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": PII}], "max_tokens": 20}
    secret = "sk-tenant-own-K-9f3"
    nc = await nats.connect(plat.env["ENCLAVE_NATS_URL"])
    on_bus: list[bytes] = []

    async def keep(msg: Msg) -> None:
        on_bus.append(msg.data)

    sub = await nc.subscribe(plat.env["ENCLAVE_BUS_PREFIX"] + ".>", cb=keep)
    for provider in providers:
        provider.mode = "ok"
    try:
        with StandinProvider("c") as own:
            async with httpx.AsyncClient(base_url=plat.base_url, timeout=120) as http:
                grant = {
                    "base_url": own.url,
                    "api_key": secret,
                    "models": {MODEL: "tenant-model"},
                    "allowed_models": [MODEL],
                    "enabled": True,
                }
                r = await http.put("/v1/admin/providers/standin", headers=admin, json=grant)
                assert r.status_code in (200, 201), r.text
                assert secret not in r.text
                # The router reads grants again after 1 s, the runtime its routes after 2 s.
                deadline = time.monotonic() + 15
                while not own.received and time.monotonic() < deadline:
                    answered = await http.post("/v1/chat/completions", headers=admin, json=body)
                    assert answered.status_code == 200, answered.text
                    if not own.received:
                        await asyncio.sleep(0.5)
                assert answered.json()["choices"][0]["message"]["content"] == "Hello from c"
                [seen] = own.received
                headers = {k.lower(): v for k, v in seen["headers"].items()}
                assert headers["authorization"] == f"Bearer {secret}"
                assert seen["body"]["model"] == "tenant-model"
                sent = json.dumps(seen["body"])
                assert "John Smith" not in sent and "john.smith@example.com" not in sent
                assert "invoice" in sent
                # From now on the tenant's endpoint alone: the platform's pools get nothing.
                before = [len(p.received) for p in providers]
                again = await http.post("/v1/chat/completions", headers=admin, json=body)
                assert again.json()["choices"][0]["message"]["content"] == "Hello from c"
                assert [len(p.received) for p in providers] == before
                assert len(own.received) == 2

                # Another tenant, without the grant: refused, nothing left.
                n = len(own.received)
                refused = await http.post("/v1/chat/completions", headers=other, json=body)
                assert refused.status_code == 403, refused.text
                assert refused.json()["error"]["code"] == "provider_not_enabled"
                assert len(own.received) == n
        await asyncio.sleep(0.2)
        # The key crossed the bus sealed (the route, the generation), never in plain.
        assert on_bus and not [m for m in on_bus if secret.encode() in m]
        assert any(b"enc:v1:" in m for m in on_bus)
        assert secret not in plat.logs()
    finally:
        await sub.unsubscribe()
        await nc.close()


async def _chat_when_ready(
    http: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]
) -> httpx.Response:
    """The first chat, asked again while the services are still starting (503)."""
    deadline = time.monotonic() + 180
    while True:
        r = await http.post("/v1/chat/completions", headers=headers, json=body)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.5)
