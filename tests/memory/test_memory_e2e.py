"""Memory and RAG through the real platform: the openai SDK's files and vector stores,
chat with retrieval and citations, the memory round trip, and deletion scans."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from typing import Any

import httpx
import openai
import pytest
import qdrant_edge as q
import redis

from libs.rpc import settled
from tests.conftest import wait_memory
from tests.infra import Platform

HANDBOOK = b"""# Orbital handbook

## Expenses
Travel expenses are reimbursed within 14 days when the receipt is uploaded to Ledgerly.

## Security
The badge office is on floor 3 of the Zephyr building; lost badges cost 25 euros.

## Holidays
Each employee has 27 vacation days per year; unused days expire on March 31.
"""


def _pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of text per page (Helvetica)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        content_id = len(objs) + 2
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
            "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 "
            "/BaseFont /Helvetica >> >> >> >>"
        )
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        kids.append(f"{len(objs) - 1} 0 R")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def sdk(platform: Platform, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=platform.base_url + "/v1", api_key=key, max_retries=0)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def streamed_chunks(platform: Platform, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunk objects of the chat, streamed (SSE, without `[DONE]`)."""
    with httpx.stream(
        "POST",
        platform.base_url + "/v1/chat/completions",
        headers=auth(key),
        json={**body, "stream": True},
        timeout=60,
    ) as s:
        return [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: {")]


def test_openai_sdk_files_and_vector_stores(platform: Platform) -> None:
    key = platform.create_key("rag-a", "developer")
    other = platform.create_key("rag-b", "developer")
    client, intruder = sdk(platform, key), sdk(platform, other)

    f = client.files.create(file=("handbook.md", HANDBOOK), purpose="assistants")
    assert f.object == "file" and f.bytes == len(HANDBOOK) and f.filename == "handbook.md"
    assert client.files.retrieve(f.id).id == f.id
    pdf = client.files.create(
        file=(
            "policy.pdf",
            _pdf(["Parking permits are issued by Hestia.", "Pets are not allowed."]),
        ),
        purpose="assistants",
    )
    vs = client.vector_stores.create(name="handbook")
    done = client.vector_stores.files.create(
        vector_store_id=vs.id, file_id=f.id, attributes={"dept": "hr"}
    )
    assert done.status == "completed", done.last_error
    assert client.vector_stores.files.create(vector_store_id=vs.id, file_id=pdf.id).status == (
        "completed"
    )
    assert {x.id for x in client.vector_stores.files.list(vector_store_id=vs.id)} == {f.id, pdf.id}
    got = client.vector_stores.retrieve(vs.id)
    assert got.file_counts.completed == 2 and got.name == "handbook"
    assert vs.id in {v.id for v in client.vector_stores.list()}

    page = client.vector_stores.search(vs.id, query="How many vacation days do I get?")
    top = page.data[0]
    assert top.file_id == f.id and "27 vacation days" in top.content[0].text
    pets = client.vector_stores.search(vs.id, query="Are pets allowed?", max_num_results=1)
    assert pets.data[0].file_id == pdf.id
    raw = httpx.post(
        f"{platform.base_url}/v1/vector_stores/{vs.id}/search",
        headers=auth(key),
        json={"query": "Are pets allowed?", "max_num_results": 1},
    ).json()
    assert raw["data"][0]["page"] == 2
    # Metadata filter: only the file whose attribute matches.
    filtered = client.vector_stores.search(
        vs.id, query="pets", filters={"type": "eq", "key": "dept", "value": "hr"}
    )
    assert {d.file_id for d in filtered.data} == {f.id}

    # Another tenant sees none of it, by id or by name.
    with pytest.raises(openai.NotFoundError):
        intruder.vector_stores.retrieve(vs.id)
    with pytest.raises(openai.NotFoundError):
        intruder.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        intruder.vector_stores.search(vs.id, query="vacation")
    with pytest.raises(openai.NotFoundError):
        intruder.files.delete(f.id)
    assert vs.id not in {v.id for v in intruder.vector_stores.list()}

    assert client.vector_stores.files.delete(file_id=pdf.id, vector_store_id=vs.id).deleted
    after = client.vector_stores.search(vs.id, query="Are pets allowed?")
    assert all(d.file_id != pdf.id for d in after.data)
    assert client.files.delete(f.id).deleted
    assert client.vector_stores.search(vs.id, query="vacation days").data == []
    assert client.vector_stores.delete(vs.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(vs.id)


def _store_with_handbook(platform: Platform, key: str, name: str) -> str:
    client = sdk(platform, key)
    f = client.files.create(file=("handbook.md", HANDBOOK), purpose="assistants")
    vs = client.vector_stores.create(name=name, file_ids=[f.id])
    return vs.id


def test_chat_with_rag_carries_citations_streamed_too(platform: Platform) -> None:
    key = platform.create_key("rag-chat", "developer")
    vs_id = _store_with_handbook(platform, key, "kb")
    body: dict[str, Any] = {
        "model": "enclave-instant",
        "messages": [{"role": "user", "content": "Where is the badge office?"}],
        "rag": {"enabled": True, "collection": "kb"},
    }
    r = httpx.post(
        platform.base_url + "/v1/chat/completions", headers=auth(key), json=body, timeout=60
    )
    assert r.status_code == 200, r.text
    out = r.json()
    cites = out["citations"]
    assert cites and cites[0]["vector_store_id"] == vs_id and cites[0]["index"] == 1
    assert "floor 3" in cites[0]["quote"] and cites[0]["chunk_id"] and cites[0]["file_id"]
    plain = httpx.post(
        platform.base_url + "/v1/chat/completions",
        headers=auth(key),
        json={k: v for k, v in body.items() if k != "rag"},
        timeout=60,
    ).json()
    # The context pack reached the model's prompt.
    assert out["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20
    assert "citations" not in plain

    chunks = streamed_chunks(platform, key, body)
    assert chunks[0]["citations"][0]["chunk_id"] == cites[0]["chunk_id"]
    assert all("citations" not in c for c in chunks[1:])

    # The SDK streams it too (extension fields are kept on the chunk).
    stream = sdk(platform, key).chat.completions.create(
        model="enclave-instant",
        messages=[{"role": "user", "content": "Where is the badge office?"}],
        stream=True,
        extra_body={"rag": {"enabled": True, "collection": vs_id}},
    )
    first = next(iter(stream))
    assert first.model_extra and first.model_extra["citations"][0]["file_id"] == cites[0]["file_id"]

    missing = httpx.post(
        platform.base_url + "/v1/chat/completions",
        headers=auth(key),
        json={**body, "rag": {"collection": "nope"}},
        timeout=60,
    )
    assert missing.status_code == 404


def _chat(platform: Platform, key: str, text: str, conversation: str) -> dict[str, Any]:
    r = httpx.post(
        platform.base_url + "/v1/chat/completions",
        headers=auth(key),
        json={
            "model": "enclave-instant",
            "messages": [{"role": "user", "content": text}],
            "memory": {"enabled": True, "conversation_id": conversation},
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _wait_memory(platform: Platform, key: str, word: str, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = httpx.get(platform.base_url + "/v1/memories", headers=auth(key), timeout=30).json()
        if any(word in m["text"] for m in data["data"]):
            return data["data"]  # type: ignore[no-any-return]
        time.sleep(0.5)
    raise AssertionError(f"no memory with {word!r}:\n{platform.logs()[-3000:]}")


def test_memory_round_trip_same_user_only(platform: Platform) -> None:
    alice = platform.create_key("mem-a", "user")
    bob = platform.create_key("mem-a", "user")
    carol = platform.create_key("mem-b", "user")
    # A fact without names: the input guardrail pseudonymises names before memory sees them.
    _chat(platform, alice, "My favourite drink is jasmine tea.", "conv-1")
    stored = _wait_memory(platform, alice, "jasmine")
    assert stored[0]["type"] in ("user", "feedback", "project", "reference")

    recalled = _chat(platform, alice, "Which drink do I like?", "conv-2")
    assert any("jasmine" in m["text"] for m in recalled["memories"])
    for key in (bob, carol):
        other = _chat(platform, key, "Which drink do I like?", "conv-1")
        assert all("jasmine" not in m["text"] for m in other["memories"])
        mine = httpx.get(platform.base_url + "/v1/memories", headers=auth(key)).json()
        assert all("jasmine" not in m["text"] for m in mine["data"])


# Lower-case words: the input guardrail pseudonymises names and redacts secrets, and this
# must reach memory as it is said to test deletion.
SECRET = "tangerine-lantern"


def _scan_everything(platform: Platform, tenant: str) -> dict[str, int]:
    """Every store the memory service writes, read directly (the service is stopped)."""
    found: dict[str, int] = {}
    for shard_dir in (platform.home / "qdrant").iterdir():
        shard = q.EdgeShard.load(str(shard_dir))
        try:
            records, _ = shard.scroll(q.ScrollRequest(limit=100_000, with_payload=True))
        finally:
            shard.close()
        found[f"qdrant:{shard_dir.name}"] = sum(
            1 for r in records if (r.payload or {}).get("tenant") == tenant
        )
        # Whatever tenant field a point claims, the secret of the deleted tenant is gone.
        found[f"qdrant-secret:{shard_dir.name}"] = sum(
            1
            for r in records
            if SECRET in json.dumps(r.payload or {}) and (r.payload or {}).get("tenant") != "del-b"
        )
    r = redis.Redis.from_url(platform.env["ENCLAVE_REDIS_URL"])
    prefix = platform.env["ENCLAVE_BUS_PREFIX"]
    found["redis"] = sum(
        1 for k in r.scan_iter(match=f"{prefix}:*", count=1000) if tenant.encode() in k
    )
    r.close()
    db = sqlite3.connect(platform.home / "enclave.db")
    for table in ("memory_files", "memory_vector_stores", "memory_vector_store_files"):
        found[f"sql:{table}"] = db.execute(
            f"SELECT count(*) FROM {table} WHERE tenant = ?", (tenant,)
        ).fetchone()[0]
    db.close()
    history = (
        platform.home / "mem0" / f"history-{hashlib.sha256(tenant.encode()).hexdigest()[:24]}.db"
    )
    found["mem0-history"] = 0
    if history.exists():
        h = sqlite3.connect(history)
        found["mem0-history"] = h.execute("SELECT count(*) FROM history").fetchone()[0]
        h.close()
    return found


def test_deletion_leaves_nothing_in_any_store(platform: Platform) -> None:
    admin = platform.create_key("del-a", "admin")
    user = platform.create_key("del-a", "user")
    keeper = platform.create_key("del-b", "admin")
    doc = HANDBOOK + f"\nThe vault code is {SECRET}.\n".encode()
    for key in (admin, keeper):
        client = sdk(platform, key)
        f = client.files.create(file=("vault.md", doc), purpose="assistants")
        client.vector_stores.create(name="vault", file_ids=[f.id])
    _chat(platform, user, f"My locker code is {SECRET}.", "conv-del")
    _chat(platform, keeper, f"My locker code is {SECRET}.", "conv-keep")
    _wait_memory(platform, user, SECRET)
    _wait_memory(platform, keeper, SECRET)

    # A user's memories, then the document, then the vector store, then the tenant.
    assert httpx.delete(platform.base_url + "/v1/memories", headers=auth(user)).json()["deleted"]
    assert httpx.get(platform.base_url + "/v1/memories", headers=auth(user)).json()["data"] == []
    client = sdk(platform, admin)
    vs = client.vector_stores.list().data[0]
    fid = client.vector_stores.files.list(vector_store_id=vs.id).data[0].id
    client.files.delete(fid)
    assert client.vector_stores.search(vs.id, query="vault code").data == []
    client.vector_stores.delete(vs.id)
    _chat(platform, user, f"Remember {SECRET} again.", "conv-del2")
    _wait_memory(platform, user, SECRET)
    r = httpx.delete(platform.base_url + "/v1/admin/tenant_data", headers=auth(admin))
    assert r.status_code == 200, r.text
    assert (
        httpx.delete(platform.base_url + "/v1/admin/tenant_data", headers=auth(user)).status_code
        == 403
    )

    platform.stop("memory")
    try:
        gone = _scan_everything(platform, "del-a")
        kept = _scan_everything(platform, "del-b")
    finally:
        platform.start("memory", "memory")
        wait_memory(platform)
    assert {k: v for k, v in gone.items() if v} == {}, gone
    # The other tenant's data is all there: chunks, memories, buffer, SQL rows, history.
    assert kept["qdrant:rag_chunks"] > 0 and kept["qdrant:memories"] > 0
    assert kept["redis"] > 0 and kept["sql:memory_files"] == 1 and kept["mem0-history"] > 0


async def test_data_changes_are_audited_without_content(platform: Platform) -> None:
    import nats

    prefix = platform.env["ENCLAVE_BUS_PREFIX"]
    nc = await nats.connect(platform.env["ENCLAVE_NATS_URL"])
    seen: list[dict[str, Any]] = []

    async def on_msg(msg: Any) -> None:
        seen.append(json.loads(msg.data))

    await nc.subscribe(f"{prefix}.audit.acme.memory", cb=on_msg)
    await settled(nc)
    try:
        async with httpx.AsyncClient(base_url=platform.base_url, timeout=60) as http:
            created = await http.post(
                "/v1/vector_stores", headers=auth(platform.admin_key), json={"name": "audited"}
            )
            assert created.status_code == 200, created.text
            store_id = created.json()["id"]
            gone = await http.delete(
                f"/v1/vector_stores/{store_id}", headers=auth(platform.admin_key)
            )
            assert gone.status_code == 200
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    actions = [e["action"] for e in seen]
    assert actions == ["vector_stores.create", "vector_stores.delete"]
    assert seen[1]["attrs"]["vector_store_id"] == store_id
    assert all(e["tenant"] == "acme" and e["service"] == "memory" for e in seen)
    assert "audited" not in json.dumps(seen)


ATLAS = {
    "quorvania.md": b"""# Quorvania

Quorvania is a small inland republic of about two million people, known for its lakes,
its rye and its glassworks.

Quorvania's seat of government is Velmora, a river port on the Sull.
""",
    "zephyria.md": b"""# Zephyria

Zephyria is an island kingdom in the northern sea.

What is its capital? Orlanth, a harbour on the east coast.
""",
}
FOLLOWUP = [
    {"role": "user", "content": "What is the population of Quorvania?"},
    {"role": "assistant", "content": "About two million people."},
    {"role": "user", "content": "And what is its capital?"},
]


async def test_chat_rewrites_a_follow_up_into_a_search_query(platform: Platform) -> None:
    """Through the gateway, the runtime and the router: the memory service has the small
    model (smollm2 on its llama.cpp worker) rewrite the follow-up with the turns before
    it, and retrieval finds the country that "its" stands for."""
    import nats

    from libs.events import GenerateRequest, TurnEvent
    from services.memory import rewrite

    key = platform.create_key("rag-rewrite", "developer")
    client = sdk(platform, key)
    ids = [
        client.files.create(file=(name, data), purpose="assistants").id
        for name, data in ATLAS.items()
    ]
    vs = client.vector_stores.create(name="atlas", file_ids=ids)
    prefix = platform.env["ENCLAVE_BUS_PREFIX"]
    nc = await nats.connect(platform.env["ENCLAVE_NATS_URL"])
    asked: list[GenerateRequest] = []
    said: list[str] = []

    async def on_generate(msg: Any) -> None:
        req = GenerateRequest.model_validate_json(msg.data)
        if req.messages and req.messages[0].content == rewrite.PROMPT:
            asked.append(req)

    async def on_delta(msg: Any) -> None:
        # inference.deltas.<replica>.<key>: the memory service's replica is "mem…".
        if msg.subject.rsplit(".", 2)[-2].startswith("mem"):
            ev = TurnEvent.model_validate_json(msg.data)
            said.extend(d.content for d in ev.deltas if d.index == 0)

    # The memory service routes, then hands the rewrite to the pool (libs/generation.py).
    await nc.subscribe(f"{prefix}.inference.worker.*", cb=on_generate)
    await nc.subscribe(f"{prefix}.inference.deltas.>", cb=on_delta)
    await settled(nc)

    async def first_cited(rewrite_query: bool) -> str:
        async with httpx.AsyncClient(base_url=platform.base_url, timeout=120) as http:
            r = await http.post(
                "/v1/chat/completions",
                headers=auth(key),
                json={
                    "model": "enclave-instant",
                    "messages": FOLLOWUP,
                    "rag": {"collection": vs.id, "top_k": 1, "rewrite_query": rewrite_query},
                },
            )
        assert r.status_code == 200, r.text
        return str(r.json()["citations"][0]["filename"])

    try:
        # As asked, "its capital" matches the other country's text best; no model asked.
        assert await first_cited(False) == "zephyria.md"
        assert asked == []
        assert await first_cited(True) == "quorvania.md"
        await asyncio.sleep(0.2)
    finally:
        await nc.close()
    # The model was asked with the conversation, and its rewrite named the country.
    assert len(asked) == 1 and asked[0].model == "smollm2-135m-instruct"
    assert "Quorvania" in asked[0].messages[-1].content  # type: ignore[operator]
    rewritten = "".join(said)
    assert "Quorvania" in rewritten and "capital" in rewritten, rewritten
