"""Another tenant's resources by id, through the gateway and the memory service built by
their bootstraps (real NATS, one SQL database): an admin of globex who knows acme's file,
vector store and key ids reaches none of them (404, as for an id that does not exist),
and lists only its own; naming acme in OpenAI-Tenant is 403 `cross_tenant`."""

from __future__ import annotations

import httpx
from nats.aio.client import Client as NatsClient

from libs.service import running
from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.hot_path import HotPath
from services.memory.bootstrap import build as build_memory


async def test_another_tenants_ids_reach_nothing(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    settings = inprocess_settings
    gw = build(settings)
    app = HotPath(gw, create_fastapi(gw))
    async with running(settings, "memory", build_memory):
        await gw.start()
        try:
            acme_key, acme = await create_key(gw.db, "acme", "admin")
            _, globex = await create_key(gw.db, "globex", "admin")
            mine = {"Authorization": f"Bearer {acme}"}
            theirs = {"Authorization": f"Bearer {globex}"}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
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
                for method, path, body in [
                    ("GET", f"/v1/files/{file_id}", None),
                    ("DELETE", f"/v1/files/{file_id}", None),
                    ("GET", f"/v1/vector_stores/{store_id}", None),
                    ("DELETE", f"/v1/vector_stores/{store_id}", None),
                    ("POST", f"/v1/vector_stores/{store_id}/search", {"query": "acme"}),
                    ("GET", f"/v1/vector_stores/{store_id}/files", None),
                    ("GET", f"/v1/vector_stores/{store_id}/files/{file_id}", None),
                    ("DELETE", f"/v1/vector_stores/{store_id}/files/{file_id}", None),
                    ("POST", f"/v1/vector_stores/{store_id}/files", {"file_id": file_id}),
                    ("DELETE", f"/v1/admin/keys/{acme_key.key_id}", None),
                ]:
                    r = await http.request(method, path, headers=theirs, json=body)
                    assert r.status_code == 404, (method, path, r.text)
                    named = await http.request(
                        method, path, headers={**theirs, "OpenAI-Tenant": "acme"}, json=body
                    )
                    assert named.status_code == 403, (method, path, named.text)
                    assert named.json()["error"]["code"] == "cross_tenant"
                assert (await http.get("/v1/files", headers=theirs)).json()["data"] == []
                assert (await http.get("/v1/vector_stores", headers=theirs)).json()["data"] == []
                keys = (await http.get("/v1/admin/keys", headers=theirs)).json()["data"]
                assert {k["tenant"] for k in keys} == {"globex"}
                # acme's are all still there.
                assert (await http.get(f"/v1/files/{file_id}", headers=mine)).status_code == 200
                got = await http.get(f"/v1/vector_stores/{store_id}", headers=mine)
                assert got.json()["file_counts"]["total"] == 1
        finally:
            await gw.stop()
