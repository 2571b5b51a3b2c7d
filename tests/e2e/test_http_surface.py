"""Health, readiness and the OpenAPI document of the running gateway."""

import httpx

from tests.infra import Platform


def test_health_readiness_and_openapi(platform: Platform) -> None:
    assert httpx.get(platform.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(platform.base_url + "/readyz").json()
    assert ready["status"] == "ready"
    assert ready["checks"] == {"nats": True, "database": True, "redis": True}
    doc = httpx.get(platform.base_url + "/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        name = ref["$ref"].rsplit("/", 1)[1]
        assert "model" in doc["components"]["schemas"][name]["properties"]
    assert "/v1/models" in doc["paths"]


def test_admin_creates_a_key_for_its_own_tenant(platform: Platform) -> None:
    r = httpx.post(
        platform.base_url + "/v1/admin/keys",
        headers={"Authorization": f"Bearer {platform.admin_key}"},
        json={"role": "user", "tenant": "someone-else"},
    )
    assert r.status_code == 201
    created = r.json()
    assert created["tenant"] == "acme" and created["role"] == "user"
    chat = httpx.post(
        platform.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {created['key']}"},
        json={"model": "enclave-instant", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert chat.status_code == 200
