"""The gateway's admission layer in process, on a real NATS, Redis and SQL: a body limit on
every route however the body comes (declared, chunked, multipart), counted as it arrives,
so a 1 GB body is refused after about the limit; and Retry-After on every 429 and 503."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key
from services.gateway.admission import DRAIN_BYTES, AdmissionLayer
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import MULTIPART_FRAMING, Gateway, build
from services.gateway.hot_path import HotPath

CHUNK = 64 * 1024
GB = 1024**3


class Lazy:
    """A body generated as it is sent, counting what was taken of it."""

    def __init__(self, size: int, head: bytes = b"", tail: bytes = b"") -> None:
        self.size, self.head, self.tail = size, head, tail
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        self.sent += len(self.head)
        left = self.size
        while left > 0:
            chunk = b"x" * min(CHUNK, left)
            left -= len(chunk)
            self.sent += len(chunk)
            yield chunk
        yield self.tail


@pytest.fixture
async def gateway(inprocess_settings: Settings) -> AsyncIterator[Gateway]:
    gw = build(inprocess_settings)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def client(gw: Gateway) -> httpx.AsyncClient:
    app = AdmissionLayer(HotPath(gw, create_fastapi(gw)), gw.body_limit)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def assert_413(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["code"] in ("request_too_large", "file_too_large")


async def test_a_1gb_chunked_body_is_refused_after_the_limit_on_every_kind_of_route(
    gateway: Gateway,
) -> None:
    _, admin = await create_key(gateway.db, "acme", "admin")
    auth = {"Authorization": f"Bearer {admin}"}
    limit = gateway.settings.max_body_bytes
    async with client(gateway) as http:
        for path in (
            "/v1/chat/completions",  # plain ASGI
            "/v1/embeddings",  # FastAPI, JSON
            "/v1/admin/keys",
            "/v1/guardrails/check",
            "/v1/vector_stores",
            "/v1/sandbox/exec",
        ):
            body = Lazy(GB, head=b'{"model": "')
            r = await http.post(path, headers=auth, content=body)  # no length: chunked
            assert_413(r)
            # Read: the limit, and what is dropped before the 413 (for clients that read
            # only once they sent everything); never the whole body.
            assert body.sent <= limit + DRAIN_BYTES + 2 * CHUNK, (path, body.sent)


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    gateway: Gateway,
) -> None:
    _, admin = await create_key(gateway.db, "acme", "admin")
    async with client(gateway) as http:
        body = Lazy(GB)
        r = await http.post(
            "/v1/embeddings",
            headers={"Authorization": f"Bearer {admin}", "Content-Length": str(GB)},
            content=body,
        )
        assert_413(r)
        assert body.sent == 0
        assert r.headers["connection"] == "close"


async def test_multipart_uploads_are_counted_as_they_arrive(gateway: Gateway) -> None:
    _, admin = await create_key(gateway.db, "acme", "admin")
    auth = {"Authorization": f"Bearer {admin}"}
    upload = gateway.upload_limit()
    boundary = b"hostile-boundary"
    head = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="big.md"\r\n'
        b"Content-Type: text/markdown\r\n\r\n"
    )
    tail = b"\r\n--" + boundary + b"--\r\n"
    multipart = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    async with client(gateway) as http:
        # 10 MB, chunked: refused once the body passes the upload's limit.
        body = Lazy(10 * 1024 * 1024, head, tail)
        r = await http.post("/v1/files", headers=multipart, content=body)
        assert_413(r)
        assert body.sent <= upload + MULTIPART_FRAMING + DRAIN_BYTES + 2 * CHUNK
        # Within the body limit, but a file larger than a bus message: the route's own 413.
        body = Lazy(upload + 100, head, tail)
        r = await http.post("/v1/files", headers=multipart, content=body)
        assert_413(r)
        assert r.json()["error"]["code"] == "file_too_large"


async def test_every_503_and_429_says_when_to_come_back(gateway: Gateway) -> None:
    _, admin = await create_key(gateway.db, "acme", "admin")
    async with client(gateway) as http:
        # Nobody serves inference.models: 503, and Retry-After.
        r = await http.get("/v1/models", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "router_unavailable"
        assert r.headers["retry-after"] == "1"
        # Other statuses get none.
        r = await http.get("/v1/models")
        assert r.status_code == 401
        assert "retry-after" not in r.headers
