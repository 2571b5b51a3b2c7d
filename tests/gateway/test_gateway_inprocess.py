"""The gateway in process, built by its bootstrap, on a real NATS, Redis and SQL: one
authorize() for the FastAPI routes and the plain-ASGI streamed ones (401, 403), a turn
streamed from a stand-in runtime, and the bus client's errors as OpenAI's (503 when no
service answers)."""

from __future__ import annotations

import httpx
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.context import RUNTIME_HEADER
from libs.events import ChatRequested, Delta, TurnEvent
from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.hot_path import HotPath


async def test_the_gateway_from_its_bootstrap(nc: NatsClient, inprocess_settings: Settings) -> None:
    gw = build(inprocess_settings)
    app = HotPath(gw, create_fastapi(gw))
    await gw.start()
    subjects = inprocess_settings.subjects

    async def runtime(msg: Msg) -> None:
        """A stand-in runtime: answers every turn with its last message, reversed."""
        event = ChatRequested.model_validate_json(msg.data)
        said = event.messages[-1].content or ""
        for ev in (
            TurnEvent(deltas=[Delta(content=said[::-1])]),
            TurnEvent(deltas=[Delta(content="", finish_reason="stop")], done=True),
        ):
            await nc.publish(
                event.reply_subject, ev.model_dump_json().encode(), headers={RUNTIME_HEADER: "rt"}
            )
        await msg.ack()

    await nc.jetstream().subscribe(
        subjects.chat_requested, durable="agent_runtime", cb=runtime, manual_ack=True
    )
    try:
        _, admin = await create_key(gw.db, "acme", "admin")
        _, user = await create_key(gw.db, "acme", "user")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
            # The same authorize() on both kinds of route.
            for path in ("/v1/chat/completions", "/v1/models"):
                missing = (
                    await http.post(path, json=body) if "chat" in path else await http.get(path)
                )
                assert missing.status_code == 401
                assert missing.json()["error"]["code"] == "missing_api_key"
            forbidden = await http.post(
                "/v1/admin/keys", headers={"Authorization": f"Bearer {user}"}, json={"role": "user"}
            )
            assert forbidden.status_code == 403
            # Fine-tuning: `fine_tune` (admin, developer), and without a trainer a 503 with
            # its code; the job body is in the OpenAPI document.
            no_role = await http.get(
                "/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {user}"}
            )
            assert no_role.status_code == 403
            no_trainer = await http.get(
                "/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {admin}"}
            )
            assert no_trainer.status_code == 503
            assert no_trainer.json()["error"]["code"] == "trainer_unavailable"
            bad = await http.post(
                "/v1/fine_tuning/jobs",
                headers={"Authorization": f"Bearer {admin}"},
                json={"model": "m"},
            )
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "training_file"
            doc = (await http.get("/openapi.json")).json()
            assert "CreateJob" in doc["components"]["schemas"]

            auth = {"Authorization": f"Bearer {admin}"}
            r = await http.post("/v1/chat/completions", headers=auth, json=body)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "olleh"
            assert r.headers["x-enclave-runtime"] == "rt"
            streamed = await http.post(
                "/v1/chat/completions", headers=auth, json={**body, "stream": True}
            )
            lines = [x for x in streamed.text.split("\n\n") if x.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            first = orjson.loads(lines[0][6:])
            assert first["choices"][0]["delta"]["content"] == "olleh"

            # Nobody serves inference.models or the guardrails: 503 in OpenAI's shape.
            models = await http.get("/v1/models", headers=auth)
            assert models.status_code == 503
            assert models.json()["error"]["code"] == "router_unavailable"
            check = await http.post("/v1/guardrails/check", headers=auth, json={"text": "hello"})
            assert check.status_code == 503
            assert check.json()["error"]["code"] == "guardrails_unavailable"
    finally:
        await gw.stop()
