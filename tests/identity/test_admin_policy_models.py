"""The admin API of guardrail policies and of models, through the gateway and the services
that own them (the guardrails; the router and an instant worker), each built by its
bootstrap on the real NATS and one SQL database.

- Policies: a tenant admin reads, replaces and deletes its tenant's document and its
  agents'; the guardrails check each with their own parser and merge rules (an invalid or
  relaxing document is a 400 naming the rule, and nothing is written), write it under the
  policy folder and announce the change; the next /v1/guardrails/check runs under it,
  another tenant's does not; the next chat through the real runtime too, even where its
  input passed unasked before (the passthrough ends). Only an admin may; every call is
  audited.
- Models: the admin view lists every model with its pool, engine, whether a worker serves
  it and whether the allow-list lets it through; a PUT allow-list is enforced where the
  router resolves a model (a route, embeddings), /v1/models lists the allowed ones only,
  and cached routes of the tenant end at once (`models.changed` `access`).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.context import RequestContext
from libs.events import AuditEvent, ChatMessage, GenerationParams, RouteReply
from libs.generation import GenerationClient, GenerationFailed, RouteCache
from libs.rpc import Bus, ReplyRouter
from libs.service import running
from libs.settings import REPO_ROOT, Settings
from services.agent_runtime.bootstrap import Runtime
from services.agent_runtime.bootstrap import build as build_runtime
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import Gateway, build
from services.gateway.hot_path import HotPath
from services.guardrails.adapters.classifier_cache import load_or_train
from services.guardrails.adapters.policy_files import PACKAGED_OPEN
from services.guardrails.bootstrap import build as build_guardrails
from services.inference_router.bootstrap import build as build_router
from services.inference_router.workers.bootstrap import builder
from services.trainer.bootstrap import Trainer
from services.trainer.bootstrap import build as build_trainer

EMAIL = "Write to me at ada.lovelace@example.com please."
TENANT_POLICY = """\
version: 2
pii:
  entities:
    EMAIL_ADDRESS: block
output:
  denied_patterns: ["zebra-[0-9]+"]
"""


async def _keys(gw: Gateway, tenant: str, other: str) -> dict[str, dict[str, str]]:
    keys: dict[str, dict[str, str]] = {}
    for name, (where, role) in {
        "admin": (tenant, "admin"),
        "dev": (tenant, "developer"),
        "auditor": (tenant, "auditor"),
        "operator": ("_platform", "platform_operator"),
        "other": (other, "admin"),
    }.items():
        _, plain = await create_key(gw.db, where, role)
        keys[name] = {"Authorization": f"Bearer {plain}"}
    keys["operator"]["OpenAI-Tenant"] = tenant
    return keys


async def _check(
    http: httpx.AsyncClient, auth: dict[str, str], text: str, direction: str = "input", **kw: str
) -> dict[str, object]:
    r = await http.post(
        "/v1/guardrails/check", headers=auth, json={"text": text, "direction": direction, **kw}
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def _seed_injection_model(home: Path) -> None:
    """The injection classifier trained once per machine (as tests/guardrails do), copied
    into this home, so that the service loads it instead of training it again."""
    shared = Path(tempfile.gettempdir()) / "enclave-guardrails-models"
    load_or_train(shared)
    shutil.copytree(shared, home / "guardrails" / "models", dirs_exist_ok=True)


async def test_policy_admin_api(nc: NatsClient, inprocess_settings: Settings) -> None:
    settings = inprocess_settings
    await asyncio.to_thread(_seed_injection_model, settings.home)
    tenant, other = "bank-" + secrets.token_hex(3), "clinic-" + secrets.token_hex(3)
    gw = build(settings)
    app = HotPath(gw, create_fastapi(gw))
    audited: list[AuditEvent] = []
    changes: list[int] = []

    async def audit(msg: Msg) -> None:
        audited.append(AuditEvent.model_validate_json(msg.data))

    async def changed(msg: Msg) -> None:
        changes.append(1)

    folder = settings.home / "guardrails" / "tenants"
    async with running(settings, "guardrails", build_guardrails):
        await gw.start()
        subs = [
            await nc.subscribe(settings.subjects.audit_all, cb=audit),
            await nc.subscribe(settings.subjects.guardrails_policy_changed, cb=changed),
        ]
        try:
            keys = await _keys(gw, tenant, other)
            admin = keys["admin"]
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                got = await http.get("/v1/admin/policy", headers=admin)
                assert got.status_code == 200, got.text
                before = got.json()
                assert before["document"] is None and before["level"] == "tenant"
                assert before["policy_version"].startswith("global@1+")
                assert before["effective"]["entities"]["EMAIL_ADDRESS"] == "pseudonymise"

                # Only a tenant admin: not a developer, an auditor nor the operator.
                for who in ("dev", "auditor", "operator"):
                    r = await http.put("/v1/admin/policy", headers=keys[who], content=TENANT_POLICY)
                    assert r.status_code == 403, (who, r.text)
                    assert r.json()["error"]["code"] == "insufficient_permissions"

                # Refused documents name the rule; nothing is written.
                for text, code, param in (
                    (
                        "version: 3\npii:\n  entities:\n    PERSON: allow\n",
                        "policy_relaxed",
                        "pii.entities.PERSON",
                    ),
                    (
                        "version: 3\ninjection:\n  threshold: 0.9\n",
                        "policy_relaxed",
                        "injection.threshold",
                    ),
                    ("version: 3\npii:\n  bogus: 1\n", "invalid_policy", "pii.bogus"),
                    ("pii: {}\n", "invalid_policy", "version"),
                    (f"version: 3\ntenant: {other}\n", "invalid_policy", "tenant"),
                    ("version: 3\nlevel: global\n", "invalid_policy", "level"),
                    ("version: [unclosed\n", "invalid_policy", "document"),
                    (
                        "version: 3\noutput:\n  denied_patterns: ['(a)\\1']\n",
                        "invalid_policy",
                        "output.denied_patterns",
                    ),
                ):
                    r = await http.put("/v1/admin/policy", headers=admin, content=text)
                    assert r.status_code == 400, (text, r.text)
                    error = r.json()["error"]
                    assert (error["code"], error["param"]) == (code, param), (text, error)
                    assert "tenant policy" in error["message"], error
                assert not (folder / f"{tenant}.yaml").exists()

                # Before: an email is pseudonymised, the pattern passes.
                assert (await _check(http, admin, EMAIL))["allowed"] is True
                assert (await _check(http, admin, "zebra-42", "output"))["allowed"] is True

                seen = len(changes)
                put = await http.put("/v1/admin/policy", headers=admin, content=TENANT_POLICY)
                assert put.status_code == 201, put.text
                written = put.json()
                assert written["created"] is True
                assert f"tenant:{tenant}@2" in written["policy_version"]
                assert written["effective"]["denied_patterns"] == ["zebra-[0-9]+"]
                stored = yaml.safe_load((folder / f"{tenant}.yaml").read_text())
                assert (stored["level"], stored["tenant"]) == ("tenant", tenant)
                assert len(changes) > seen  # announced before the reply
                assert not list(folder.glob(".put-*"))  # the temporary file was renamed

                # The next check runs under it; another tenant's does not.
                blocked = await _check(http, admin, EMAIL)
                assert blocked["allowed"] is False
                assert blocked["rule"] == "pii.entities.EMAIL_ADDRESS"
                assert blocked["policy_version"] == written["policy_version"]
                out = await _check(http, admin, "the code is zebra-42", "output")
                assert out["allowed"] is False and out["rule"] == "output.denied_patterns"
                assert (await _check(http, keys["other"], EMAIL))["allowed"] is True
                assert (await _check(http, keys["other"], "zebra-42", "output"))["allowed"] is True
                assert (await http.get("/v1/admin/policy", headers=keys["other"])).json()[
                    "document"
                ] is None

                # An agent's document, sent as JSON: it may only restrict the tenant's.
                relaxing = {"version": "a1", "pii": {"entities": {"EMAIL_ADDRESS": "redact"}}}
                r = await http.put("/v1/admin/policy/agents/support", headers=admin, json=relaxing)
                assert r.status_code == 400
                assert r.json()["error"]["param"] == "pii.entities.EMAIL_ADDRESS"
                assert "agent policy" in r.json()["error"]["message"]
                agent_doc = {"version": "a1", "output": {"denied_patterns": ["walrus"]}}
                r = await http.put("/v1/admin/policy/agents/support", headers=admin, json=agent_doc)
                assert r.status_code == 201, r.text
                assert (folder / tenant / "agents" / "support.yaml").exists()
                agent_out = await _check(http, admin, "a walrus", "output", policy="support")
                assert agent_out["allowed"] is False
                assert (await _check(http, admin, "a walrus", "output"))["allowed"] is True
                got_agent = (
                    await http.get("/v1/admin/policy/agents/support", headers=admin)
                ).json()
                assert got_agent["document"]["output"] == {"denied_patterns": ["walrus"]}
                assert got_agent["effective"]["denied_patterns"] == ["zebra-[0-9]+", "walrus"]
                # A tenant document the agent's would no longer hold under is refused.
                loosen = "version: 4\noutput:\n  entities:\n    URL: block\n"
                r = await http.put(
                    "/v1/admin/policy/agents/support",
                    headers=admin,
                    content="version: a2\noutput:\n  entities:\n    URL: redact\n",
                )
                assert r.status_code == 200, r.text
                r = await http.put("/v1/admin/policy", headers=admin, content=loosen)
                assert r.status_code == 400 and "agent `support`" in r.json()["error"]["message"]

                # Replaced: 200; deleted: the agent's, then the tenant's.
                again = await http.put("/v1/admin/policy", headers=admin, content=TENANT_POLICY)
                assert again.status_code == 200 and again.json()["created"] is False
                gone = await http.delete("/v1/admin/policy/agents/support", headers=admin)
                assert gone.status_code == 200 and gone.json()["deleted"] is True
                missing = await http.get("/v1/admin/policy/agents/support", headers=admin)
                assert missing.status_code == 404
                assert missing.json()["error"]["code"] == "policy_not_found"
                assert (await http.delete("/v1/admin/policy", headers=admin)).status_code == 200
                assert (await http.delete("/v1/admin/policy", headers=admin)).status_code == 404
                assert (await _check(http, admin, EMAIL))["allowed"] is True
                bad_name = await http.get("/v1/admin/policy/agents/bad%20name", headers=admin)
                assert bad_name.status_code == 400, bad_name.text
        finally:
            for sub in subs:
                await sub.unsubscribe()
            await gw.stop()
    await asyncio.sleep(0.2)
    puts = [e for e in audited if e.action == "admin.policy.put" and e.tenant == tenant]
    assert [e.outcome for e in puts].count("refused") == 8 + 2  # the tenant's and agent's
    assert {e.outcome for e in puts} == {"ok", "refused"}
    assert any(e.action == "admin.policy.delete" for e in audited)
    assert all(e.role == "admin" for e in puts)


async def test_models_admin_api(
    nc: NatsClient, inprocess_settings: Settings, tmp_path: Path
) -> None:
    registry = yaml.safe_load((REPO_ROOT / "deploy" / "models.yaml").read_text())
    registry["pools"]["unserved"] = {"engine": "instant"}
    registry["models"].append({"id": "enclave-unserved", "kind": "chat", "pool": "unserved"})
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(registry))
    settings = inprocess_settings.model_copy(update={"models_file": tmp_path / "models.yaml"})
    tenant, other = "bank-" + secrets.token_hex(3), "clinic-" + secrets.token_hex(3)
    gw = build(settings)
    app = HotPath(gw, create_fastapi(gw))
    bus = Bus(nc, settings)
    deltas = await ReplyRouter(nc, settings.subjects.inference_deltas("adm1", "")).start()
    routes = RouteCache(3600.0)  # only models.changed ends a cached route here
    client = GenerationClient(bus, deltas, routes, 10.0)
    await client.follow_models_changed()
    said = [ChatMessage(role="user", content="hi")]
    ctx = RequestContext(tenant=tenant, request_id="r" + secrets.token_hex(3))
    async with (
        running(settings, "inference_router", build_router),
        running(settings, "worker-instant", builder(settings, "instant")),
        running(settings, "trainer", build_trainer) as trainer,
    ):
        assert isinstance(trainer, Trainer)
        await gw.start()
        try:
            # The tenant's own fine-tuned model: a promoted adapter version of smollm2.
            await trainer.service.store.add_adapter(
                tenant=tenant,
                base_model="smollm2-135m-instruct",
                digest="sha256:" + "cd" * 32,
                job_id="ftjob-x",
                trained_by="k",
                eval_report={},
                meta={},
                bundle_path="",
                status="promoted",
                status_reason="",
                version=1,
            )
            keys = await _keys(gw, tenant, other)
            admin = keys["admin"]
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                listed = await http.get("/v1/admin/models", headers=admin)
                assert listed.status_code == 200, listed.text
                body = listed.json()
                assert body["allowed"] is None
                by_id = {m["id"]: m for m in body["data"]}
                assert by_id["enclave-instant"]["serving"] is True
                assert by_id["enclave-instant"]["engine"] == "instant"
                assert by_id["enclave-unserved"]["serving"] is False
                assert by_id["all-minilm-l6-v2"]["kind"] == "embedding"
                assert by_id["all-minilm-l6-v2"]["pool"] == "minilm"
                assert all(m["allowed"] and m["external"] is False for m in body["data"])
                ft = f"{tenant}/smollm2-135m-instruct:ft"
                assert by_id[ft]["fine_tuned"] is True and by_id[ft]["owned_by"] == tenant
                assert by_id[ft + "-v1"]["fine_tuned"] is True
                assert not by_id["enclave-instant"]["fine_tuned"]
                other_view = (await http.get("/v1/admin/models", headers=keys["other"])).json()
                assert ft not in {m["id"] for m in other_view["data"]}
                # The operator may too (naming the tenant); a developer may not.
                assert (await http.get("/v1/admin/models", headers=keys["operator"])).is_success
                dev = await http.put("/v1/admin/models", headers=keys["dev"], json={"allowed": []})
                assert dev.status_code == 403

                # Before: chats and embeddings of every model.
                assert await client.complete(ctx, "enclave-instant", said, GenerationParams())
                routes.put(tenant, "enclave-instant", "chat", RouteReply(pool="instant"))
                routes.put(other, "enclave-instant", "chat", RouteReply(pool="instant"))

                unknown = await http.put(
                    "/v1/admin/models", headers=admin, json={"allowed": ["no-such-model"]}
                )
                assert unknown.status_code == 400
                assert unknown.json()["error"]["param"] == "allowed"
                bad = await http.put("/v1/admin/models", headers=admin, json={"allowed": "x"})
                assert bad.status_code == 400
                put = await http.put(
                    "/v1/admin/models", headers=admin, json={"allowed": ["smollm2-135m-instruct"]}
                )
                assert put.status_code == 200, put.text
                assert put.json()["allowed"] == ["smollm2-135m-instruct"]
                for _ in range(100):  # models.changed `access`: the tenant's routes end
                    if routes.get(tenant, "enclave-instant", "chat") is None:
                        break
                    await asyncio.sleep(0.02)
                assert routes.get(tenant, "enclave-instant", "chat") is None
                assert routes.get(other, "enclave-instant", "chat") is not None

                # Enforced where the router resolves: a chat's route, embeddings.
                with pytest.raises(GenerationFailed) as refused:
                    await client.complete(ctx, "enclave-instant", said, GenerationParams())
                assert (refused.value.info.status, refused.value.info.code) == (
                    403,
                    "model_not_allowed",
                )
                allowed_route = await client.route(ctx, "smollm2-135m-instruct", "chat")
                assert allowed_route.pool == "smollm2"
                emb = await http.post(
                    "/v1/embeddings",
                    headers=admin,
                    json={"model": "all-minilm-l6-v2", "input": "hello"},
                )
                assert emb.status_code == 403, emb.text
                assert emb.json()["error"]["code"] == "model_not_allowed"
                # /v1/models: the allowed ones only; another tenant sees every model.
                mine = (await http.get("/v1/models", headers=keys["dev"])).json()["data"]
                # Its fine-tuned ids go with their base model.
                assert sorted(m["id"] for m in mine) == sorted(
                    ["smollm2-135m-instruct", ft, ft + "-v1"]
                )
                theirs = (await http.get("/v1/models", headers=keys["other"])).json()["data"]
                assert "enclave-instant" in {m["id"] for m in theirs}
                other_ctx = RequestContext(tenant=other, request_id="r" + secrets.token_hex(3))
                assert await client.complete(other_ctx, "enclave-instant", said, GenerationParams())
                view = (await http.get("/v1/admin/models", headers=admin)).json()
                assert view["allowed"] == ["smollm2-135m-instruct"]
                flags = {m["id"]: m["allowed"] for m in view["data"]}
                assert flags["smollm2-135m-instruct"] and not flags["enclave-instant"]

                # The tenant's limits stay apart from its allow-list.
                op = keys["operator"]
                lim = await http.put(
                    "/v1/admin/tenant", headers=op, json={"limits": {"concurrency": 3}}
                )
                assert lim.status_code == 200, lim.text
                rec = (await http.get("/v1/admin/tenant", headers=admin)).json()
                assert rec["own_limits"] == {"concurrency": 3}
                assert (await http.get("/v1/admin/models", headers=admin)).json()["allowed"] == [
                    "smollm2-135m-instruct"
                ]

                # null: every model again.
                back = await http.put("/v1/admin/models", headers=admin, json={"allowed": None})
                assert back.status_code == 200 and back.json()["allowed"] is None
                for _ in range(100):
                    try:
                        await client.complete(ctx, "enclave-instant", said, GenerationParams())
                        break
                    except GenerationFailed:
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the model stayed refused")
                everything = orjson.loads((await http.get("/v1/models", headers=admin)).content)
                assert "enclave-instant" in {m["id"] for m in everything["data"]}
        finally:
            await gw.stop()


async def test_a_policy_put_ends_the_input_passthrough_of_the_next_chat(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    """Under a global policy that checks nothing, the runtime lets a tenant's input through
    unasked (a 60 s grant here). A tenant policy PUT through the admin API is announced
    before its reply, so the very next chat of that tenant is screened under it (an email
    blocked), while another tenant's chat still passes."""
    settings = inprocess_settings.model_copy(update={"guard_passthrough_s": 60.0})
    await asyncio.to_thread(_seed_injection_model, settings.home)
    (settings.home / "guardrails").mkdir(parents=True, exist_ok=True)
    (settings.home / "guardrails" / "global.yaml").write_text(PACKAGED_OPEN.read_text())
    tenant, other = "bank-" + secrets.token_hex(3), "clinic-" + secrets.token_hex(3)
    gw = build(settings)
    app = HotPath(gw, create_fastapi(gw))
    chat = {"model": "enclave-instant", "messages": [{"role": "user", "content": EMAIL}]}
    async with (
        running(settings, "guardrails", build_guardrails),
        running(settings, "inference_router", build_router),
        running(settings, "worker-instant", builder(settings, "instant")),
        running(settings, "agent_runtime", build_runtime) as runtime,
    ):
        assert isinstance(runtime, Runtime)
        await gw.start()
        try:
            keys = await _keys(gw, tenant, other)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                for _ in range(2):  # the first grants the passthrough, the second uses it
                    r = await http.post("/v1/chat/completions", headers=keys["admin"], json=chat)
                    assert r.status_code == 200, r.text
                    assert r.json()["choices"][0]["finish_reason"] == "stop"
                assert runtime.ports.passthrough.granted
                policy = "version: 1\npii:\n  enabled: true\n  min_score: 0.5\n" + (
                    "  entities:\n    EMAIL_ADDRESS: block\n"
                )
                put = await http.put("/v1/admin/policy", headers=keys["admin"], content=policy)
                assert put.status_code == 201, put.text
                blocked = await http.post("/v1/chat/completions", headers=keys["admin"], json=chat)
                assert blocked.status_code == 200, blocked.text
                choice = blocked.json()["choices"][0]
                assert choice["finish_reason"] == "content_filter"
                assert "pii.entities.EMAIL_ADDRESS" in choice["message"]["content"]
                assert put.json()["policy_version"] in choice["message"]["content"]
                fine = await http.post("/v1/chat/completions", headers=keys["other"], json=chat)
                assert fine.status_code == 200, fine.text
                assert fine.json()["choices"][0]["finish_reason"] == "stop"
        finally:
            await gw.stop()
