"""The admin API of tenants, providers and usage, and a tenant's erasure, through the
gateway, the memory service and the trainer built by their bootstraps on the real NATS,
Redis and one SQL database.

- A platform operator key acts only for the tenant it names; it sets the tenant's limits,
  which the gateway then enforces (here its monthly budget); it may not infer or read
  the tenant's files. A tenant admin may not set limits.
- Providers: enabled per tenant with an allow-list; the API key is sealed at rest (the SQL
  row holds `enc:v1:...`, which the home's key opens), never shown again; a base_url off
  the platform's allowed prefixes is refused.
- Usage: tokens and requests per day, key and model.
- Erasure: the tenant's keys (401 at once), documents and memories, fine-tuning jobs,
  adapter versions and bundles, providers, record and Redis counters are gone; another
  tenant's are not; the erasure itself is audited.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from sqlalchemy import select

from libs.context import RUNTIME_HEADER
from libs.db.engine import sessions
from libs.db.models import TenantProviderRecord
from libs.events import AuditEvent, ChatRequested, Delta, TurnEvent, Usage
from libs.secret_box import SecretBox
from libs.service import running
from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.hot_path import HotPath
from services.memory.bootstrap import build as build_memory
from services.trainer.bootstrap import Trainer
from services.trainer.bootstrap import build as build_trainer
from services.trainer.jobs import new_job

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}


async def test_tenants_providers_usage_and_erasure(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    # Tenants may name only this address for a provider (the platform's allow-list).
    settings = inprocess_settings.model_copy(
        update={"provider_url_prefixes": ["https://api.example.test/v1"]}
    )
    tenant, other = "bank-" + secrets.token_hex(3), "clinic-" + secrets.token_hex(3)
    gw = build(settings)
    app = HotPath(gw, create_fastapi(gw))
    audited: list[AuditEvent] = []

    async def runtime(msg: Msg) -> None:
        event = ChatRequested.model_validate_json(msg.data)
        for ev in (
            TurnEvent(deltas=[Delta(content="hi")]),
            TurnEvent(
                deltas=[Delta(content="", finish_reason="stop")],
                usage=Usage(prompt_tokens=3, completion_tokens=4),
                done=True,
            ),
        ):
            await nc.publish(
                event.reply_subject, ev.model_dump_json().encode(), headers={RUNTIME_HEADER: "rt"}
            )
        await msg.ack()

    async def audit(msg: Msg) -> None:
        audited.append(AuditEvent.model_validate_json(msg.data))

    async with (
        running(settings, "memory", build_memory),
        running(settings, "trainer", build_trainer) as trainer,
    ):
        assert isinstance(trainer, Trainer)
        await gw.start()
        await nc.jetstream().subscribe(
            settings.subjects.chat_requested, durable="agent_runtime", cb=runtime, manual_ack=True
        )
        audit_sub = await nc.subscribe(settings.subjects.audit_all, cb=audit)
        try:
            keys: dict[str, dict[str, str]] = {}
            ids: dict[str, str] = {}
            for name, (where, role) in {
                "operator": ("_platform", "platform_operator"),
                "admin": (tenant, "admin"),
                "auditor": (tenant, "auditor"),
                "dev": (tenant, "developer"),
                "other": (other, "admin"),
            }.items():
                stored, plain = await create_key(gw.db, where, role)
                keys[name], ids[name] = {"Authorization": f"Bearer {plain}"}, stored.key_id
            op = {**keys["operator"], "OpenAI-Tenant": tenant}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                await _tenant_record(http, keys, op)
                await _providers(http, keys, gw.db, settings)
                await _usage(http, keys, ids)
                await _erasure(http, keys, op, trainer, tenant, gw)
        finally:
            await audit_sub.unsubscribe()
            await gw.stop()
    erased = [e for e in audited if e.action == "admin.tenant.erase"]
    assert [e.tenant for e in erased] == [tenant]
    assert erased[0].role == "platform_operator" and erased[0].attrs["keys"] == 3


async def _tenant_record(
    http: httpx.AsyncClient, keys: dict[str, dict[str, str]], op: dict[str, str]
) -> None:
    # An operator names its tenant, or is refused; a tenant admin may not set limits.
    bare = await http.put("/v1/admin/tenant", headers=keys["operator"], json={})
    assert bare.status_code == 400 and bare.json()["error"]["code"] == "tenant_required"
    refused = await http.put("/v1/admin/tenant", headers=keys["admin"], json={})
    assert refused.status_code == 403
    body = {"display_name": "A Bank", "limits": {"monthly_tokens": 10, "concurrency": 4}}
    made = await http.put("/v1/admin/tenant", headers=op, json=body)
    assert made.status_code == 201, made.text
    bad = await http.put("/v1/admin/tenant", headers=op, json={"limits": {"concurrency": -1}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limits.concurrency"
    # The operator may not read the tenant's content, nor infer for it.
    assert (await http.post("/v1/chat/completions", headers=op, json=CHAT)).status_code == 403
    assert (await http.get("/v1/files", headers=op)).status_code == 403
    got = (await http.get("/v1/admin/tenant", headers=keys["auditor"])).json()
    assert got["limits"]["concurrency"] == 4 and got["limits"]["monthly_tokens"] == 10
    assert got["display_name"] == "A Bank" and got["own_limits"] == body["limits"]
    assert got["limits"]["key_rpm"] == 6000  # the settings' where the record sets none
    # The record's budget is enforced: a chat reserves 2 + 5 and uses 7 of the 10.
    first = await http.post("/v1/chat/completions", headers=keys["admin"], json=CHAT)
    assert first.status_code == 200, first.text
    over = await http.post("/v1/chat/completions", headers=keys["admin"], json=CHAT)
    assert over.status_code == 429 and over.json()["error"]["code"] == "insufficient_quota"
    # Lift it again for the rest of the test.
    lifted = await http.put("/v1/admin/tenant", headers=op, json={"limits": {}})
    assert lifted.status_code == 200


async def _providers(
    http: httpx.AsyncClient, keys: dict[str, dict[str, str]], db: Any, settings: Settings
) -> None:
    admin = keys["admin"]
    body = {
        "base_url": "https://api.example.test/v1",
        "api_key": "sk-very-secret-123",
        "models": {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o"},
        "allowed_models": ["gpt-4o-mini"],
        "enabled": True,
    }
    made = await http.put("/v1/admin/providers/openai-eu", headers=admin, json=body)
    assert made.status_code == 201, made.text
    shown = made.json()
    assert shown["api_key_set"] is True and "sk-very" not in made.text
    assert shown["allowed_models"] == ["gpt-4o-mini"] and shown["enabled"] is True
    async with sessions(db)() as session:
        [row] = (await session.execute(select(TenantProviderRecord))).scalars().all()
    assert row.api_key.startswith("enc:v1:") and "sk-very" not in row.api_key
    assert SecretBox.at(settings.home).open(row.api_key) == "sk-very-secret-123"
    # Replaced without a key: the sealed one stays; disabled.
    again = await http.put(
        "/v1/admin/providers/openai-eu",
        headers=admin,
        json={**{k: v for k, v in body.items() if k != "api_key"}, "enabled": False},
    )
    assert again.status_code == 200 and again.json()["api_key_set"] is True
    unknown = await http.put(
        "/v1/admin/providers/x", headers=admin, json={**body, "allowed_models": ["gpt-5"]}
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "allowed_models"
    for url in ("http://169.254.169.254/latest", "https://api.example.test/v1.evil.test"):
        bad = await http.put(
            "/v1/admin/providers/openai-eu", headers=admin, json={**body, "base_url": url}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "base_url", bad.text
    badname = await http.put("/v1/admin/providers/Bad Name", headers=admin, json=body)
    assert badname.status_code == 400
    for who in ("auditor", "dev"):
        r = await http.put("/v1/admin/providers/openai-eu", headers=keys[who], json=body)
        assert r.status_code == 403
    listed = (await http.get("/v1/admin/providers", headers=admin)).json()["data"]
    assert [p["name"] for p in listed] == ["openai-eu"] and listed[0]["enabled"] is False
    # Another tenant sees none of them.
    assert (await http.get("/v1/admin/providers", headers=keys["other"])).json()["data"] == []
    tmp = await http.put("/v1/admin/providers/tmp", headers=admin, json=body)
    assert tmp.status_code == 201
    assert (await http.delete("/v1/admin/providers/tmp", headers=admin)).status_code == 200
    assert (await http.delete("/v1/admin/providers/tmp", headers=admin)).status_code == 404


async def _usage(
    http: httpx.AsyncClient, keys: dict[str, dict[str, str]], ids: dict[str, str]
) -> None:
    for who, n in (("dev", 3), ("admin", 1)):
        for _ in range(n):
            r = await http.post("/v1/chat/completions", headers=keys[who], json=CHAT)
            assert r.status_code == 200, r.text
    await http.post("/v1/chat/completions", headers=keys["other"], json=CHAT)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    usage = await http.get(f"/v1/admin/usage?start={today}&end={today}", headers=keys["auditor"])
    assert usage.status_code == 200, usage.text
    got = usage.json()
    rows = {(r["key_id"], r["model"]): (r["tokens"], r["requests"]) for r in got["data"]}
    assert rows == {(ids["dev"], "m"): (21, 3), (ids["admin"], "m"): (14, 2)}
    assert (got["total_tokens"], got["total_requests"]) == (35, 5)
    assert (await http.get("/v1/admin/usage", headers=keys["dev"])).status_code == 403
    bad = await http.get("/v1/admin/usage?start=yesterday", headers=keys["admin"])
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start"


async def _erasure(
    http: httpx.AsyncClient,
    keys: dict[str, dict[str, str]],
    op: dict[str, str],
    trainer: Trainer,
    tenant: str,
    gw: Any,
) -> None:
    # Data in each service: a document, a fine-tuning job, an adapter and its bundle.
    upload = await http.post(
        "/v1/files",
        headers=keys["dev"],
        files={"file": ("a.txt", b"quarterly numbers", "text/plain")},
        data={"purpose": "assistants"},
    )
    assert upload.status_code == 200, upload.text
    other_upload = await http.post(
        "/v1/files",
        headers=keys["other"],
        files={"file": ("b.txt", b"other tenant", "text/plain")},
        data={"purpose": "assistants"},
    )
    assert other_upload.status_code == 200
    service = trainer.service
    job, created = new_job(
        tenant=tenant, model="smollm2-135m-instruct", training_file="f", now=int(time.time())
    )
    assert await service.store.create_job(job, created)
    digest = "sha256:" + "ab" * 32
    bundle = service.bundles.write(tenant, digest, {"adapter_config.json": b"{}"})
    await service.store.add_adapter(
        tenant=tenant,
        base_model="smollm2-135m-instruct",
        digest=digest,
        job_id=job.id,
        trained_by="k",
        eval_report={},
        meta={},
        bundle_path=str(bundle),
        status="promoted",
        status_reason="",
        version=1,
    )
    assert await gw.auth.quotas.used_this_month(tenant) > 0

    # Only the operator erases.
    assert (await http.delete("/v1/admin/tenant", headers=keys["admin"])).status_code == 403
    erased = await http.delete("/v1/admin/tenant", headers=op)
    assert erased.status_code == 200, erased.text
    summary = erased.json()["deleted"]
    assert summary["keys"] == 3 and summary["memory"] is True
    assert (summary["fine_tuning_jobs"], summary["adapters"], summary["adapter_bundles"]) == (
        1,
        1,
        1,
    )
    assert summary["providers"] == 1 and summary["tenant_record"] == 1
    # Its keys are gone at once; its files, jobs, adapters, bundles and counters too.
    for who in ("admin", "auditor", "dev"):
        r = await http.get("/v1/models", headers=keys[who])
        assert r.status_code == 401, (who, r.text)
    _, fresh = await create_key(gw.db, tenant, "admin")
    again = {"Authorization": f"Bearer {fresh}"}
    assert (await http.get("/v1/files", headers=again)).json()["data"] == []
    assert (await http.get("/v1/admin/providers", headers=again)).json()["data"] == []
    assert list(await service.store.jobs(tenant)) == []
    assert list(await service.store.adapters(tenant)) == []
    assert not bundle.exists()
    assert await gw.auth.quotas.used_this_month(tenant) == 0
    # The other tenant keeps everything.
    others = (await http.get("/v1/files", headers=keys["other"])).json()["data"]
    assert [f["id"] for f in others] == [other_upload.json()["id"]]
    await asyncio.sleep(0)
