"""A revocation reaches every gateway replica at once: two replicas in process (each
built by its bootstrap, each subscribed to `keys.revoked`) have a key cached for
`key_cache_seconds`; `enclave keys revoke` (services/keys_cli.py) publishes KeyRevoked and
the next request on either replica, within 1 s, is 401."""

from __future__ import annotations

import asyncio
import time

import httpx

from libs.settings import Settings
from services import keys_cli
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build


async def test_a_revoked_key_fails_on_every_replica_within_a_second(
    inprocess_settings: Settings,
) -> None:
    settings = inprocess_settings.model_copy(update={"key_cache_seconds": 3600.0})
    replicas = [build(settings), build(settings)]
    for gw in replicas:
        await gw.start()
    try:
        stored, plaintext = await create_key(replicas[0].db, "acme", "admin")
        auth = {"Authorization": f"Bearer {plaintext}"}
        clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_fastapi(gw)), base_url="http://gw"
            )
            for gw in replicas
        ]
        try:
            # An authorized probe that changes nothing: a key with no valid role is a 400.
            probe = {"role": "none"}
            for http in clients:  # the key works, and each replica now has it cached
                r = await http.post("/v1/admin/keys", headers=auth, json=probe)
                assert r.status_code == 400, r.text
            for gw in replicas:
                assert stored.key_id in gw.auth.key_cache

            done, why = await keys_cli.revoke(settings, stored.key_id, "acme")
            assert done, why
            revoked_at = time.monotonic()
            pending = list(clients)
            while pending and time.monotonic() - revoked_at < 1.0:
                for http in list(pending):
                    r = await http.post("/v1/admin/keys", headers=auth, json=probe)
                    if r.status_code == 401:
                        assert r.json()["error"]["code"] == "invalid_api_key"
                        pending.remove(http)
                    else:
                        assert r.status_code == 400, r.text
                await asyncio.sleep(0.05)
            assert not pending, "a replica still accepted the key 1 s after its revocation"
        finally:
            for http in clients:
                await http.aclose()
    finally:
        for gw in replicas:
            await gw.stop()
