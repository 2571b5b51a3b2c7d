"""Every error status the gateway promises, each produced by a real request."""

from __future__ import annotations

import httpx
import pytest

from tests.infra import Platform

CHAT = {"model": "enclave-instant", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def http(platform: Platform) -> httpx.Client:
    return httpx.Client(base_url=platform.base_url, timeout=30)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code:
        assert err["code"] == code
    return err


def test_400_on_malformed_json(http: httpx.Client, platform: Platform) -> None:
    r = http.post("/v1/chat/completions", headers=auth(platform.admin_key), content=b'{"model": ')
    assert_openai_error(r, 400, "invalid_json")


def test_400_not_422_on_schema_errors(http: httpx.Client, platform: Platform) -> None:
    r = http.post("/v1/chat/completions", headers=auth(platform.admin_key), json={"model": "x"})
    err = assert_openai_error(r, 400)
    assert err["param"] == "messages"
    r = http.post(
        "/v1/chat/completions", headers=auth(platform.admin_key), json={**CHAT, "temperature": 9}
    )
    assert assert_openai_error(r, 400)["param"] == "temperature"
    r = http.post("/v1/embeddings", headers=auth(platform.admin_key), json={"model": 3})
    assert_openai_error(r, 400)


def test_401_without_key_and_with_a_bad_key(http: httpx.Client, platform: Platform) -> None:
    assert_openai_error(http.post("/v1/chat/completions", json=CHAT), 401, "missing_api_key")
    forged = platform.admin_key[:-4] + "abcd"
    r = http.post("/v1/chat/completions", headers=auth(forged), json=CHAT)
    assert_openai_error(r, 401, "invalid_api_key")
    r = http.post("/v1/chat/completions", headers=auth("not-a-key"), json=CHAT)
    assert_openai_error(r, 401, "invalid_api_key")


def test_403_for_a_role_without_the_right(http: httpx.Client, platform: Platform) -> None:
    auditor = platform.create_key("acme", "auditor")
    r = http.post("/v1/chat/completions", headers=auth(auditor), json=CHAT)
    assert_openai_error(r, 403, "insufficient_permissions")
    user = platform.create_key("acme", "user")
    r = http.post("/v1/admin/keys", headers=auth(user), json={"role": "admin"})
    assert_openai_error(r, 403)


def test_404_unknown_model_and_route(http: httpx.Client, platform: Platform) -> None:
    r = http.post(
        "/v1/chat/completions",
        headers=auth(platform.admin_key),
        json={**CHAT, "model": "no-such-model"},
    )
    err = assert_openai_error(r, 404, "model_not_found")
    assert err["param"] == "model"
    r = http.post(
        "/v1/chat/completions",
        headers=auth(platform.admin_key),
        json={**CHAT, "model": "no-such-model", "stream": True},
    )
    assert_openai_error(r, 404, "model_not_found")
    assert_openai_error(http.get("/v1/nothing-here", headers=auth(platform.admin_key)), 404)


def test_413_body_too_large(http: httpx.Client, platform: Platform) -> None:
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    r = http.post("/v1/chat/completions", headers=auth(platform.admin_key), json=huge)
    assert_openai_error(r, 413, "request_too_large")


def test_429_over_the_rate_limit(http: httpx.Client, platform: Platform) -> None:
    # A token bucket of 2: two at once, then one more every 30 s.
    limited = platform.create_key("acme", "user", rpm=2)
    statuses = [
        http.post("/v1/chat/completions", headers=auth(limited), json=CHAT).status_code
        for _ in range(2)
    ]
    assert statuses == [200, 200]
    r = http.post("/v1/chat/completions", headers=auth(limited), json=CHAT)
    assert_openai_error(r, 429, "rate_limit_exceeded")
    assert 1 <= int(r.headers["retry-after"]) <= 30


def test_503_when_no_worker_serves_the_pool(http: httpx.Client, platform: Platform) -> None:
    r = http.post(
        "/v1/chat/completions",
        headers=auth(platform.admin_key),
        json={**CHAT, "model": "enclave-unserved"},
    )
    assert_openai_error(r, 503, "no_worker_available")


def test_504_when_the_upstream_is_too_slow(http: httpx.Client, platform: Platform) -> None:
    for stream in (False, True):
        r = http.post(
            "/v1/chat/completions",
            headers=auth(platform.admin_key),
            json={**CHAT, "model": "enclave-slow", "stream": stream},
        )
        assert_openai_error(r, 504, "upstream_timeout")


def test_400_when_a_model_cannot_serve_the_route(http: httpx.Client, platform: Platform) -> None:
    r = http.post(
        "/v1/chat/completions",
        headers=auth(platform.admin_key),
        json={**CHAT, "model": "all-minilm-l6-v2"},
    )
    assert_openai_error(r, 400, "model_not_supported")
