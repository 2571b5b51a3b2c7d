"""Another tenant's resources by id, of every kind, through the gateway and the services
built by their bootstraps in this process (memory, trainer, audit, guardrails, runtime,
router; real NATS, one SQL database): files, vector stores, keys, memories, fine-tuned
adapters (as a model, and as a chat's model), fine-tuning jobs, the audit chain, stored
responses, approvals and skills.

An admin of globex who knows acme's ids reaches none of them (404, as for an id that does
not exist), lists only its own, and naming acme in OpenAI-Tenant is 403 `cross_tenant`;
acme's are all intact afterwards. What a heavy service would make (a trained adapter, a
job, a paused agent run, a stored response) is written by the adapter that service uses.
One test, so that the services (the memory service's embedder above all) start once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient

from libs.approvals import ApprovalStore, new_approval_id
from libs.context import RequestContext
from libs.events import ApprovalRecord, RouteReply, RouteRequest
from libs.rpc import Bus
from libs.service import running
from libs.settings import Settings
from services.agent_runtime.bootstrap import build as build_runtime
from services.audit.bootstrap import build as build_audit
from services.gateway.adapters.sql_keys import create_key
from services.gateway.adapters.sql_responses import SqlResponses
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.hot_path import HotPath
from services.guardrails.bootstrap import build as build_guardrails
from services.inference_router.bootstrap import build as build_router
from services.memory.bootstrap import Memory
from services.memory.bootstrap import build as build_memory
from services.trainer.bootstrap import Trainer
from services.trainer.bootstrap import build as build_trainer
from services.trainer.jobs import new_job

BASE = "smollm2-135m-instruct"
SKILL = "---\nname: acme-only\ndescription: Acme's private procedure.\n---\nStep one.\n"

Call = tuple[str, str, dict[str, Any] | None]


async def _refused_both_ways(
    http: httpx.AsyncClient, theirs: dict[str, str], calls: list[Call], status: int = 404
) -> None:
    """Each call is `status` for globex's own credential, 403 `cross_tenant` naming acme."""
    for method, path, body in calls:
        r = await http.request(method, path, headers=theirs, json=body)
        assert r.status_code == status, (method, path, r.text)
        if status == 404:  # the answer for an id that does not exist
            assert r.json()["error"]["code"].endswith("not_found"), (method, path, r.text)
        named = await http.request(
            method, path, headers={**theirs, "OpenAI-Tenant": "acme"}, json=body
        )
        assert named.status_code == 403, (method, path, named.text)
        assert named.json()["error"]["code"] == "cross_tenant"


def _tenants(value: Any) -> set[str]:
    """Every `tenant` field, at any depth."""
    if isinstance(value, dict):
        found = {value["tenant"]} if isinstance(value.get("tenant"), str) else set()
        return found.union(*(_tenants(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_tenants(v) for v in value))
    return set()


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_another_tenants_ids_reach_nothing(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    settings = inprocess_settings
    gw = build(settings)
    app = HotPath(gw, create_fastapi(gw))
    bus = Bus(nc, settings)
    async with (
        running(settings, "audit", build_audit),
        running(settings, "memory", build_memory) as memory,
        running(settings, "trainer", build_trainer) as trainer,
        running(settings, "guardrails", build_guardrails),
        running(settings, "agent_runtime", build_runtime),
        running(settings, "inference_router", build_router),
    ):
        assert isinstance(memory, Memory) and isinstance(trainer, Trainer)
        await gw.start()
        try:
            acme_key, acme = await create_key(gw.db, "acme", "admin")
            _, globex = await create_key(gw.db, "globex", "admin")
            mine = {"Authorization": f"Bearer {acme}"}
            theirs = {"Authorization": f"Bearer {globex}"}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                await _files_stores_and_keys(http, mine, theirs, acme_key.key_id)
                await _memories(http, mine, theirs, memory)
                await _adapters_and_jobs(http, mine, theirs, trainer, bus)
                await _responses_and_approvals(http, mine, theirs, gw, nc, settings)
                await _skills(http, mine, theirs)
                await _audit(http, mine, theirs)
        finally:
            await gw.stop()


async def _files_stores_and_keys(
    http: httpx.AsyncClient, mine: dict[str, str], theirs: dict[str, str], acme_key_id: str
) -> None:
    up = await http.post(
        "/v1/files",
        headers=mine,
        files={"file": ("a.txt", b"acme only", "text/plain")},
        data={"purpose": "assistants"},
    )
    file_id = up.json()["id"]
    store = await http.post(
        "/v1/vector_stores", headers=mine, json={"name": "kb", "file_ids": [file_id]}
    )
    store_id = store.json()["id"]
    await _refused_both_ways(
        http,
        theirs,
        [
            ("GET", f"/v1/files/{file_id}", None),
            ("DELETE", f"/v1/files/{file_id}", None),
            ("GET", f"/v1/files/{file_id}/content", None),
            ("GET", f"/v1/vector_stores/{store_id}", None),
            ("DELETE", f"/v1/vector_stores/{store_id}", None),
            ("POST", f"/v1/vector_stores/{store_id}/search", {"query": "acme"}),
            ("GET", f"/v1/vector_stores/{store_id}/files", None),
            ("GET", f"/v1/vector_stores/{store_id}/files/{file_id}", None),
            ("DELETE", f"/v1/vector_stores/{store_id}/files/{file_id}", None),
            ("POST", f"/v1/vector_stores/{store_id}/files", {"file_id": file_id}),
            ("DELETE", f"/v1/admin/keys/{acme_key_id}", None),
        ],
    )
    assert (await http.get("/v1/files", headers=theirs)).json()["data"] == []
    assert (await http.get("/v1/vector_stores", headers=theirs)).json()["data"] == []
    keys = (await http.get("/v1/admin/keys", headers=theirs)).json()["data"]
    assert {k["tenant"] for k in keys} == {"globex"}
    # acme's are all still there.
    assert (await http.get(f"/v1/files/{file_id}", headers=mine)).status_code == 200
    got = await http.get(f"/v1/vector_stores/{store_id}", headers=mine)
    assert got.json()["file_counts"]["total"] == 1


async def _memories(
    http: httpx.AsyncClient, mine: dict[str, str], theirs: dict[str, str], memory: Memory
) -> None:
    memories = memory.svc.memories
    [mid] = await asyncio.to_thread(
        memories.add, "acme", "u:alice", "fact", "Alice prefers green tea", "test"
    )
    await _refused_both_ways(
        http,
        theirs,
        [
            ("DELETE", f"/v1/memories/{mid}?user=alice", None),
            ("DELETE", f"/v1/memories/{mid}", None),
        ],
    )
    # globex's own alice (its list, its erasure) is globex's, not acme's.
    listed = await http.get("/v1/memories?user=alice", headers=theirs)
    assert listed.status_code == 200 and listed.json()["data"] == [], listed.text
    wiped = await http.delete("/v1/memories?user=alice", headers=theirs)
    assert wiped.status_code == 200 and wiped.json()["memories"] == 0, wiped.text
    named = await http.get("/v1/memories?user=alice", headers={**theirs, "OpenAI-Tenant": "acme"})
    assert named.status_code == 403 and named.json()["error"]["code"] == "cross_tenant"
    own = await http.get("/v1/memories?user=alice", headers=mine)
    assert [m["id"] for m in own.json()["data"]] == [mid], own.text


async def _adapters_and_jobs(
    http: httpx.AsyncClient,
    mine: dict[str, str],
    theirs: dict[str, str],
    trainer: Trainer,
    bus: Bus,
) -> None:
    service = trainer.service
    job, created = new_job(tenant="acme", model=BASE, training_file="f", now=int(time.time()))
    assert await service.store.create_job(job, created)
    digest = "sha256:" + "cd" * 32
    await service.store.add_adapter(
        tenant="acme",
        base_model=BASE,
        digest=digest,
        job_id=job.id,
        trained_by="k",
        eval_report={},
        meta={},
        bundle_path="",
        status="promoted",
        status_reason="",
        version=1,
    )
    adapter = f"acme/{BASE}:ft-v1"

    async def seen(headers: dict[str, str]) -> list[str]:
        r = await http.get("/v1/models", headers=headers)
        return [m["id"] for m in r.json()["data"]] if r.status_code == 200 else []

    async def acme_sees_it() -> bool:
        return adapter in await seen(mine)

    await _until(acme_sees_it)  # the router's subscriptions reached the server
    assert not [m for m in await seen(theirs) if m.startswith("acme/")]
    await _refused_both_ways(
        http,
        theirs,
        [
            ("GET", f"/v1/models/{adapter}", None),
            ("GET", f"/v1/models/acme/{BASE}:ft", None),
            ("GET", f"/v1/fine_tuning/jobs/{job.id}", None),
            ("GET", f"/v1/fine_tuning/jobs/{job.id}/events", None),
            ("GET", f"/v1/fine_tuning/jobs/{job.id}/checkpoints", None),
            ("POST", f"/v1/fine_tuning/jobs/{job.id}/cancel", None),
        ],
    )
    listed = await http.get("/v1/fine_tuning/jobs", headers=theirs)
    assert listed.status_code == 200 and listed.json()["data"] == [], listed.text

    # A chat naming acme's adapter as its model: the runtime asks the router for the
    # route, which asks the trainer for the adapter in the caller's tenant only.
    async def route(tenant: str, model: str) -> RouteReply:
        ctx = RequestContext(tenant=tenant, request_id="r-xt", actor="k", role="admin")
        return await bus.ask(
            bus.peers.router,
            bus.subjects.inference_route,
            RouteRequest(ctx=ctx, model=model),
            RouteReply,
        )

    for model in (adapter, f"acme/{BASE}:ft"):
        foreign = await route("globex", model)
        assert foreign.error is not None and foreign.error.status == 404, foreign
    # And the chat itself (the runtime asks the route before anything else).
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    await _refused_both_ways(
        http,
        theirs,
        [
            ("POST", "/v1/chat/completions", {**chat, "model": adapter}),
            ("POST", "/v1/chat/completions", {**chat, "model": adapter, "stream": True}),
            ("POST", "/v1/responses", {"model": adapter, "input": "hi"}),
        ],
    )
    own_route = await route("acme", adapter)
    assert own_route.error is None or own_route.error.status != 404, own_route  # no pool here
    # acme's job and adapter are intact.
    got = await http.get(f"/v1/fine_tuning/jobs/{job.id}", headers=mine)
    assert got.status_code == 200 and got.json()["status"] == job.status, got.text
    assert (await http.get(f"/v1/models/{adapter}", headers=mine)).status_code == 200


async def _responses_and_approvals(
    http: httpx.AsyncClient,
    mine: dict[str, str],
    theirs: dict[str, str],
    gw: Any,
    nc: NatsClient,
    settings: Settings,
) -> None:
    rid = "resp_" + "ab12" * 6
    body = {
        "id": rid,
        "object": "response",
        "status": "queued",
        "background": True,
        "model": "m",
        "output": [],
    }
    assert await SqlResponses(gw.db).put("acme", body, [])
    store = ApprovalStore(nc, settings.subjects)
    apr = new_approval_id()
    ctx = RequestContext(tenant="acme", request_id="req-apr", actor="k-acme", role="admin")
    await store.create(
        ApprovalRecord(id=apr, tenant="acme", agent="a", tool="t", call_id="c1", ctx=ctx)
    )
    await _refused_both_ways(
        http,
        theirs,
        [
            ("GET", f"/v1/responses/{rid}", None),
            ("POST", f"/v1/responses/{rid}/cancel", None),
            ("POST", "/v1/responses", {"model": "m", "input": "hi", "previous_response_id": rid}),
            ("GET", f"/v1/approvals/{apr}", None),
            ("POST", f"/v1/approvals/{apr}", {"approve": True}),
            (
                "POST",
                "/v1/responses",
                {
                    "model": "m",
                    "input": [
                        {
                            "type": "mcp_approval_response",
                            "approval_request_id": apr,
                            "approve": True,
                        }
                    ],
                },
            ),
        ],
    )
    listed = await http.get("/v1/approvals", headers=theirs)
    assert listed.status_code == 200 and listed.json()["data"] == [], listed.text
    # acme's response and approval are as they were.
    got = await http.get(f"/v1/responses/{rid}", headers=mine)
    assert got.status_code == 200 and got.json()["status"] == "queued", got.text
    found = await store.get("acme", apr)
    assert found is not None and found[0].status == "pending"
    assert [a["id"] for a in (await http.get("/v1/approvals", headers=mine)).json()["data"]] == [
        apr
    ]


async def _skills(http: httpx.AsyncClient, mine: dict[str, str], theirs: dict[str, str]) -> None:
    upload = {"files": [{"path": "SKILL.md", "content": SKILL}]}
    made = await http.post("/v1/skills", headers=mine, json=upload)
    assert made.status_code in (200, 201), made.text
    await _refused_both_ways(
        http,
        theirs,
        [("GET", "/v1/skills/acme-only", None), ("DELETE", "/v1/skills/acme-only", None)],
    )
    listed = await http.get("/v1/skills", headers=theirs)
    assert listed.status_code == 200 and listed.json()["data"] == [], listed.text
    got = await http.get("/v1/skills/acme-only", headers=mine)
    assert got.status_code == 200 and "Step one." in got.text, got.text


async def _audit(http: httpx.AsyncClient, mine: dict[str, str], theirs: dict[str, str]) -> None:
    async def acme_has_entries() -> bool:
        r = await http.get("/v1/audit/entries", headers=mine)
        return r.status_code == 200 and r.json()["count"] > 0

    await _until(acme_has_entries)
    # Asking for acme's chain in any way a client might is globex's own chain, or refused.
    for path in ("/v1/audit/entries?limit=500", "/v1/audit/entries?tenant=acme&limit=500"):
        r = await http.get(path, headers=theirs)
        assert r.status_code == 200, r.text
        entries = r.json()["entries"]
        # (The refusals above are in globex's chain too, under the same request ids.)
        assert entries and {e["event"]["tenant"] for e in entries} == {"globex"}
    exported = await http.get("/v1/audit/export?tenant=acme", headers=theirs)
    assert exported.status_code == 200, exported.text
    lines = [json.loads(line) for line in exported.text.splitlines() if line]
    assert lines[0]["type"] == "header" and lines[0]["tenant"] == "globex"
    assert [line for line in lines if "body" in line]  # globex's own entries
    assert _tenants(lines) == {"globex"}
    await _refused_both_ways(
        http,
        theirs,
        [
            ("GET", "/v1/audit/entries", None),
            ("GET", "/v1/audit/export", None),
            ("POST", "/v1/audit/verify", {}),
        ],
        status=200,
    )
    # The refusals are in both chains (cross_tenant is recorded for the tenant named).
    assert (await http.post("/v1/audit/verify", headers=mine, json={})).json()["ok"] is True
