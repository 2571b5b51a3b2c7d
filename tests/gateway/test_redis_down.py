"""Redis down: the gateway behaves as documented (services/gateway/README.md). The limits
live in Redis, so nothing is admitted while it is away: every route answers 503
`limits_unavailable` with Retry-After in OpenAI's error shape, never a 500, and the same
gateway admits again once Redis is back."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.hot_path import HotPath
from tests.infra import free_port


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
async def test_redis_down_is_503_with_retry_after_then_serves_again(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    port = free_port()
    settings = inprocess_settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{port}/0"}  # nobody listens there yet
    )
    gw = build(settings)
    await gw.start()
    try:
        _, key = await create_key(gw.db, "acme", "developer")
        auth = {"Authorization": f"Bearer {key}"}
        transport = httpx.ASGITransport(app=HotPath(gw, create_fastapi(gw)))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            for stream in (False, True):
                r = await client.post(
                    "/v1/chat/completions", headers=auth, json={**chat, "stream": stream}
                )
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "limits_unavailable"
                assert int(r.headers["retry-after"]) >= 1
            models = await client.get("/v1/models", headers=auth)
            assert models.status_code == 503, models.text
            assert models.json()["error"]["code"] == "limits_unavailable"
            assert "retry-after" in models.headers
            # A bad key is still told so: identity does not need Redis.
            bad = await client.get("/v1/models", headers={"Authorization": "Bearer ek_nope"})
            assert bad.status_code == 401

            # Redis comes up where the gateway looks for it: the same gateway admits again.
            redis = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                for _ in range(100):
                    back = await client.get("/v1/models", headers=auth)
                    if back.status_code != 503 or "limits_unavailable" not in back.text:
                        break
                    await asyncio.sleep(0.1)
                # Admitted: what answers now is the bus (no router here), not the limits.
                assert "limits_unavailable" not in back.text, back.text
            finally:
                redis.terminate()
                redis.wait(timeout=10)
    finally:
        await gw.stop()
