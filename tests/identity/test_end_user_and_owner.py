"""The `user` field and owners, through the gateway, the memory service and the guardrails
built by their bootstraps on the real NATS (one SQL database, keys in it):

- the OpenAI `user` field reaches the turn as asserted only for admin and developer keys;
  a user-role key is its own end user, and naming another is 403;
- `user:` ACLs on documents: a developer speaking for alice finds alice's document; a
  user-role key that names alice is refused, and without naming anyone it finds only what
  its own principal may read (the memory service applies the rule again);
- files and vector stores record their owner: another user-role key of the same tenant
  may not delete them (403 `not_owner`), a developer neither; the owner and an admin may.
"""

from __future__ import annotations

from typing import Any

import httpx
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.context import RUNTIME_HEADER, RequestContext
from libs.errors import EnclaveError
from libs.events import (
    ChatRequested,
    Delta,
    RagOptions,
    RetrieveReply,
    RetrieveRequest,
    TurnEvent,
)
from libs.rpc import Bus
from libs.service import running
from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.hot_path import HotPath
from services.guardrails.bootstrap import build as build_guardrails
from services.memory.bootstrap import build as build_memory

DOC = b"The launch code of project Falcon is tangerine-seven. Only Alice may read this."


async def test_the_user_field_acls_and_owners(nc: NatsClient, inprocess_settings: Settings) -> None:
    settings = inprocess_settings
    gw = build(settings)
    app = HotPath(gw, create_fastapi(gw))
    seen: list[ChatRequested] = []

    async def runtime(msg: Msg) -> None:
        event = ChatRequested.model_validate_json(msg.data)
        seen.append(event)
        for ev in (
            TurnEvent(deltas=[Delta(content="ok")]),
            TurnEvent(deltas=[Delta(content="", finish_reason="stop")], done=True),
        ):
            await nc.publish(
                event.reply_subject, ev.model_dump_json().encode(), headers={RUNTIME_HEADER: "rt"}
            )
        await msg.ack()

    # The guardrails screen what retrieval finds (indirect injection) before it is returned.
    async with (
        running(settings, "guardrails", build_guardrails),
        running(settings, "memory", build_memory),
    ):
        await gw.start()
        await nc.jetstream().subscribe(
            settings.subjects.chat_requested, durable="agent_runtime", cb=runtime, manual_ack=True
        )
        try:
            keys = {}
            for role in ("admin", "developer", "user", "other_user"):
                stored, plain = await create_key(gw.db, "acme", role.replace("other_", ""))
                keys[role] = (stored.key_id, {"Authorization": f"Bearer {plain}"})
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                await _user_field(http, keys, seen)
                store_id = await _owners(http, keys)
            await _acls(nc, settings, keys, store_id)
        finally:
            await gw.stop()


async def _user_field(
    http: httpx.AsyncClient, keys: dict[str, Any], seen: list[ChatRequested]
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for role in ("admin", "developer"):
        r = await http.post(
            "/v1/chat/completions", headers=keys[role][1], json={**body, "user": "alice"}
        )
        assert r.status_code == 200, r.text
        assert seen[-1].params.user == "alice"
    user_id, user_auth = keys["user"]
    refused = await http.post(
        "/v1/chat/completions", headers=user_auth, json={**body, "user": "alice"}
    )
    assert refused.status_code == 403
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (
        "user_not_allowed",
        "user",
    )
    count = len(seen)
    assert (await http.post("/v1/chat/completions", headers=user_auth, json=body)).is_success
    assert len(seen) == count + 1 and seen[-1].params.user == user_id  # its own end user
    completion = await http.post(
        "/v1/completions", headers=user_auth, json={"model": "m", "prompt": "x", "user": "bob"}
    )
    assert completion.status_code == 403


async def _owners(http: httpx.AsyncClient, keys: dict[str, Any]) -> str:
    """Returns the id of a vector store holding alice's document (ACL user:alice)."""
    _, user = keys["user"]
    _, other = keys["other_user"]
    _, dev = keys["developer"]
    _, admin = keys["admin"]

    async def upload(auth: dict[str, str]) -> str:
        r = await http.post(
            "/v1/files",
            headers=auth,
            files={"file": ("falcon.txt", DOC, "text/plain")},
            data={"purpose": "assistants"},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    mine = await upload(user)
    store = await http.post("/v1/vector_stores", headers=user, json={"name": "kb"})
    store_id = str(store.json()["id"])
    added = await http.post(
        f"/v1/vector_stores/{store_id}/files",
        headers=user,
        json={"file_id": mine, "attributes": {"acl": "user:alice"}},
    )
    assert added.json()["status"] == "completed", added.text
    for auth in (other, dev):
        for path in (
            f"/v1/files/{mine}",
            f"/v1/vector_stores/{store_id}",
            f"/v1/vector_stores/{store_id}/files/{mine}",
        ):
            r = await http.delete(path, headers=auth)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"]["code"] == "not_owner"
    # Everyone of the tenant may still read them.
    assert (await http.get(f"/v1/files/{mine}", headers=other)).status_code == 200
    # The owner deletes its own; an admin deletes anyone's.
    second = await upload(user)
    assert (await http.delete(f"/v1/files/{second}", headers=user)).json()["deleted"] is True
    third = await upload(other)
    assert (await http.delete(f"/v1/files/{third}", headers=admin)).json()["deleted"] is True
    throwaway = await http.post("/v1/vector_stores", headers=other, json={"name": "tmp"})
    gone = await http.delete(f"/v1/vector_stores/{throwaway.json()['id']}", headers=admin)
    assert gone.json()["deleted"] is True
    return store_id


async def _acls(nc: NatsClient, settings: Settings, keys: dict[str, Any], store_id: str) -> None:
    bus = Bus(nc, settings)

    async def retrieve(role: str, user: str) -> RetrieveReply:
        key_id = keys[role][0]
        ctx = RequestContext(
            tenant="acme", request_id="r-" + role, actor=key_id, role=role.replace("other_", "")
        )
        request = RetrieveRequest(
            ctx=ctx,
            user=user,
            query="launch code of project Falcon",
            rag=RagOptions(collection=store_id),
        )
        return await bus.ask(
            bus.peers.memory, settings.subjects.memory_retrieve, request, RetrieveReply
        )

    found = await retrieve("developer", "alice")
    assert found.error is None and found.citations, found
    assert (await retrieve("developer", "")).citations == []
    assert (await retrieve("other_user", "")).citations == []  # not alice, not itself
    try:
        refused = await retrieve("other_user", "alice")
    except EnclaveError as exc:
        assert exc.info.status == 403
    else:
        assert refused.error is not None and refused.error.status == 403, refused
        assert refused.citations == []
    assert (await retrieve("user", "")).citations == []  # its uploader is not alice either
