"""The admin's key API in process (gateway from its bootstrap, real NATS, Redis, SQL):
create with a validated body (400 naming the field, never a 500), list without hashes or
plaintexts, revoke in the own tenant only (404 for another tenant's key), admin role only,
each audited, and a revocation announced on `keys.revoked`."""

from __future__ import annotations

import asyncio
from typing import get_args

import httpx
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.events import AuditEvent, KeyRevoked
from libs.rpc import settled
from libs.settings import Settings
from services.gateway import keys
from services.gateway.adapters.sql_keys import create_key, find_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.key_routes import NewKeyBody


def test_the_body_names_the_four_roles() -> None:
    # A tenant's admin never mints a platform operator (`enclave keys create` does).
    roles = set(keys.ROLES) - {"platform_operator"}
    assert set(get_args(NewKeyBody.model_fields["role"].annotation)) == roles


async def test_create_list_revoke_through_the_admin_api(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    subjects = inprocess_settings.subjects
    audited: list[AuditEvent] = []
    announced: list[KeyRevoked] = []

    async def on_audit(msg: Msg) -> None:
        audited.append(AuditEvent.model_validate_json(msg.data))

    async def on_revoked(msg: Msg) -> None:
        announced.append(KeyRevoked.model_validate_json(msg.data))

    await nc.subscribe(subjects.audit_all, cb=on_audit)
    await nc.subscribe(subjects.keys_revoked, cb=on_revoked)
    await settled(nc)

    gw = build(inprocess_settings)
    await gw.start()
    try:
        _, admin = await create_key(gw.db, "acme", "admin")
        _, developer = await create_key(gw.db, "acme", "developer")
        other, _ = await create_key(gw.db, "globex", "user")
        transport = httpx.ASGITransport(app=create_fastapi(gw))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            auth = {"Authorization": f"Bearer {admin}"}

            # Bad bodies: a 400 naming the field.
            for body, param in (
                ({"role": "root"}, "role"),
                ({}, "role"),
                ({"role": "user", "rate_limit_rpm": "60"}, "rate_limit_rpm"),
                ({"role": "user", "rate_limit_rpm": -1}, "rate_limit_rpm"),
                ({"role": "user", "rate_limit_rpm": 0}, "rate_limit_rpm"),
                ({"role": "user", "rate_limit_rpm": 1_000_001}, "rate_limit_rpm"),
                ({"role": "user", "rate_limit_rpm": 1.5}, "rate_limit_rpm"),
                ({"role": "user", "name": "x" * 129}, "name"),
                ({"role": "user", "name": 7}, "name"),
            ):
                r = await http.post("/v1/admin/keys", headers=auth, json=body)
                assert r.status_code == 400, (body, r.text)
                assert r.json()["error"]["param"] == param, (body, r.text)
            r = await http.post("/v1/admin/keys", headers=auth, content=b"[1]")
            assert r.status_code == 400

            # Create: audited with the key's id and role, never its secret.
            r = await http.post(
                "/v1/admin/keys",
                headers=auth,
                json={"role": "user", "name": "ci", "rate_limit_rpm": 1_000_000},
            )
            assert r.status_code == 201, r.text
            created = r.json()
            new_key, new_id = created["key"], created["key_id"]
            assert created["tenant"] == "acme" and created["role"] == "user"
            assert (await find_key(gw.db, new_id)).rate_limit_rpm == 1_000_000  # type: ignore[union-attr]
            ok = await http.post(
                "/v1/admin/keys", headers=auth, json={"role": "auditor", "tenant": "globex"}
            )
            assert ok.status_code == 201 and ok.json()["tenant"] == "acme"  # never the client's

            # List: the own tenant's keys only, never hashes or plaintexts.
            r = await http.get("/v1/admin/keys", headers=auth)
            assert r.status_code == 200, r.text
            listed = r.json()["data"]
            ids = {k["key_id"] for k in listed}
            assert new_id in ids and other.key_id not in ids
            assert {k["tenant"] for k in listed} == {"acme"}
            assert all("secret_hash" not in k and "key" not in k for k in listed)
            assert new_key.split("_", 2)[2] not in r.text

            # Admin role only.
            dev = {"Authorization": f"Bearer {developer}"}
            assert (await http.get("/v1/admin/keys", headers=dev)).status_code == 403
            r = await http.delete(f"/v1/admin/keys/{new_id}", headers=dev)
            assert r.status_code == 403

            # Another tenant's key, or none: 404, and that key still works.
            r = await http.delete(f"/v1/admin/keys/{other.key_id}", headers=auth)
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "key_not_found"
            assert not (await find_key(gw.db, other.key_id)).revoked  # type: ignore[union-attr]
            assert (await http.delete("/v1/admin/keys/nope", headers=auth)).status_code == 404

            # Revoke: the key stops working, and the revocation is announced.
            new_auth = {"Authorization": f"Bearer {new_key}"}
            assert (await http.get("/v1/admin/keys", headers=new_auth)).status_code == 403
            r = await http.delete(f"/v1/admin/keys/{new_id}", headers=auth)
            assert r.status_code == 200, r.text
            assert r.json()["revoked"] is True
            assert (await http.get("/v1/admin/keys", headers=new_auth)).status_code == 401
            r = await http.get("/v1/admin/keys", headers=auth)
            assert [k["revoked"] for k in r.json()["data"] if k["key_id"] == new_id] == [True]

        for _ in range(50):
            if announced and len([e for e in audited if e.action == "key.revoked"]) >= 3:
                break
            await asyncio.sleep(0.1)
        assert announced == [KeyRevoked(key_id=new_id, tenant="acme")]
        created_events = [e for e in audited if e.action == "key.created"]
        assert {e.attrs["key_id"] for e in created_events} >= {new_id}
        mine = next(e for e in created_events if e.attrs["key_id"] == new_id)
        assert mine.tenant == "acme" and mine.attrs["key_role"] == "user"
        assert mine.attrs["rate_limit_rpm"] == 1_000_000
        assert new_key.split("_", 2)[2] not in mine.model_dump_json()
        revoked = {
            (e.attrs["key_id"], e.outcome, e.tenant) for e in audited if e.action == "key.revoked"
        }
        assert revoked == {
            (other.key_id, "not_found", "acme"),
            ("nope", "not_found", "acme"),
            (new_id, "ok", "acme"),
        }
        assert any(e.action == "admin.keys.list" and e.tenant == "acme" for e in audited)
    finally:
        await gw.stop()
