"""The gateway in process answers a max_tokens / max_completion_tokens / max_output_tokens
past the model's context window with a 400 naming the field and the limit, on every route
that generates, before anything is published (no runtime behind it)."""

from __future__ import annotations

import httpx
import yaml
from nats.aio.client import Client as NatsClient

from libs.model_context import MAX_TOKENS
from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.hot_path import HotPath
from tests.unit.test_model_context import REGISTRY


async def test_the_gateway_answers_each_route_with_the_model_limit(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    registry = inprocess_settings.home / "models.yaml"
    registry.write_text(yaml.safe_dump(REGISTRY))
    settings = inprocess_settings.model_copy(update={"models_file": registry})
    gw = build(settings)
    app = HotPath(gw, create_fastapi(gw))
    await gw.start()
    try:
        _, admin = await create_key(gw.db, "acme", "admin")
        headers = {"Authorization": f"Bearer {admin}"}
        messages = [{"role": "user", "content": "hi"}]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            for path, body, param in (
                ("/v1/chat/completions", {"messages": messages, "max_tokens": 4096}, "max_tokens"),
                (
                    "/v1/chat/completions",
                    {"messages": messages, "max_completion_tokens": 4096, "stream": True},
                    "max_completion_tokens",
                ),
                ("/v1/completions", {"prompt": "hi", "max_tokens": 4096}, "max_tokens"),
                ("/v1/responses", {"input": "hi", "max_output_tokens": 4096}, "max_output_tokens"),
            ):
                r = await http.post(path, headers=headers, json={"model": "small-chat", **body})
                assert r.status_code == 400, (path, r.text)
                err = r.json()["error"]
                assert (err["code"], err["param"]) == ("invalid_value", param), err
                assert "2048" in err["message"], err
            # The absolute ceiling still holds for a model without a known window.
            r = await http.post(
                "/v1/chat/completions",
                headers=headers,
                json={"model": "instant-chat", "messages": messages, "max_tokens": MAX_TOKENS + 1},
            )
            assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
    finally:
        await gw.stop()
