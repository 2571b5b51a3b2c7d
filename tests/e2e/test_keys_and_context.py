"""Keys are stored hashed and never logged; the tenant travels from the credential."""

from __future__ import annotations

import asyncio

import httpx
import nats
import orjson
from sqlalchemy import text

from libs.db.engine import make_engine, migrate_async
from libs.rpc import settled
from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key, find_key
from services.gateway.keys import matches, parse
from tests.infra import Platform


def test_key_never_in_the_database_or_the_logs(platform: Platform) -> None:
    key = platform.create_key("acme", "developer")
    key_id, secret = parse(key)  # type: ignore[misc]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "enclave-instant", "messages": [{"role": "user", "content": "hi"}]}
    assert (
        httpx.post(
            platform.base_url + "/v1/chat/completions", headers=headers, json=body, timeout=30
        ).status_code
        == 200
    )
    bad = httpx.post(
        platform.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}x"},
        json=body,
        timeout=30,
    )
    assert bad.status_code == 401
    db = (platform.home / "enclave.db").read_bytes()
    for wal in platform.home.glob("enclave.db-*"):
        db += wal.read_bytes()
    assert key_id.encode() in db  # the public id is there: we looked in the right place
    assert secret.encode() not in db and key.encode() not in db
    logs = platform.logs()
    assert secret not in logs and key not in logs


async def test_key_hashed_on_postgres(pg_url: str) -> None:
    settings = Settings(database_url=pg_url)
    await migrate_async(settings)
    engine = make_engine(pg_url)
    try:
        _, plaintext = await create_key(engine, "acme", "user")
        key_id, secret = parse(plaintext)  # type: ignore[misc]
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM api_keys"))).all()
        dump = repr(rows)
        assert key_id in dump and secret not in dump and plaintext not in dump
        found = await find_key(engine, key_id)
        assert found is not None and found.tenant == "acme"
        assert matches(key_id, secret, found.secret_hash)
        assert not matches(key_id, secret + "x", found.secret_hash)
    finally:
        await engine.dispose()


async def test_request_context_rides_in_nats_headers(platform: Platform) -> None:
    prefix = platform.env["ENCLAVE_BUS_PREFIX"]
    nc = await nats.connect(platform.env["ENCLAVE_NATS_URL"])
    seen: asyncio.Queue[nats.aio.msg.Msg] = asyncio.Queue()

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        await seen.put(msg)

    await nc.subscribe(f"{prefix}.chat.requested", cb=on_msg)
    await settled(nc)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(
                platform.base_url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {platform.admin_key}"},
                # The client claims another tenant: it must be ignored.
                json={
                    "model": "enclave-instant",
                    "tenant": "evil",
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
        assert r.status_code == 200
        msg = await asyncio.wait_for(seen.get(), 5)
        assert msg.headers is not None
        assert msg.headers["enclave-tenant"] == "acme"
        assert msg.headers["enclave-request-id"] == r.headers["x-request-id"]
        assert msg.headers["traceparent"].startswith("00-")
        payload = orjson.loads(msg.data)
        assert payload["ctx"]["tenant"] == "acme"
        assert payload["v"] == 1
    finally:
        await nc.close()
