"""OpenAI-Tenant through the gateway built by its bootstrap: a credential that names another
tenant is refused on the streamed and the FastAPI routes alike, and the attempt lands in
both tenants' audit chains (real NATS, Redis and SQL)."""

from __future__ import annotations

import asyncio

import httpx
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.events import AuditActions, AuditEvent
from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.hot_path import HotPath


async def test_another_tenant_is_refused_and_audited(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    gw = build(inprocess_settings)
    app = HotPath(gw, create_fastapi(gw))
    await gw.start()
    got: list[AuditEvent] = []

    async def collect(msg: Msg) -> None:
        event = AuditEvent.model_validate_json(msg.data)
        if event.action == AuditActions.ACCESS_DENIED:
            got.append(event)

    sub = await nc.subscribe(inprocess_settings.subjects.audit_all, cb=collect)
    try:
        _, key = await create_key(gw.db, "acme", "admin")
        auth = {"Authorization": f"Bearer {key}"}
        body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            other = {**auth, "OpenAI-Tenant": "globex"}
            for r in (
                await http.post("/v1/chat/completions", headers=other, json=body),
                await http.get("/v1/models", headers=other),
            ):
                assert r.status_code == 403, r.text
                assert r.json()["error"]["code"] == "cross_tenant"
            # Its own tenant named: authorized (nobody serves the models here: 503).
            own = await http.get("/v1/models", headers={**auth, "OpenAI-Tenant": "acme"})
            assert own.status_code == 503
        for _ in range(50):
            if len(got) == 4:
                break
            await asyncio.sleep(0.05)
        assert sorted(e.tenant for e in got) == ["acme", "acme", "globex", "globex"]
        assert {e.attrs["operation"] for e in got} == {"infer", "list_models"}
        assert all(e.outcome == "denied" and e.attrs["target_tenant"] == "globex" for e in got)
    finally:
        await sub.unsubscribe()
        await gw.stop()
