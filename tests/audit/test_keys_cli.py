"""`enclave keys create/list/revoke`: each audited on the bus; a revocation announced."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import nats
import orjson
from nats.aio.msg import Msg

from libs.db.engine import make_engine
from libs.events import AuditEvent, KeyRevoked
from libs.settings import Settings
from services.gateway.adapters.sql_keys import find_key
from services.gateway.keys import parse
from tests.infra import REPO


def _cli(settings: Settings, pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(
        ENCLAVE_HOME=str(settings.home),
        ENCLAVE_NATS_URL=settings.nats_url,
        ENCLAVE_BUS_PREFIX=settings.bus_prefix,
        ENCLAVE_DATABASE_URL=pg_url,
    )
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "keys", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_keys_are_listed_and_revoked_and_each_step_is_audited(
    bus_settings: Settings, pg_url: str
) -> None:
    nc = await nats.connect(bus_settings.nats_url)
    announced: list[KeyRevoked] = []

    async def heard(msg: Msg) -> None:
        announced.append(KeyRevoked.model_validate_json(msg.data))

    await nc.subscribe(bus_settings.subjects.keys_revoked, cb=heard)
    run = asyncio.to_thread
    try:
        out = await run(_cli, bus_settings, pg_url, "create", "--tenant", "acme", "--role", "user")
        assert out.returncode == 0, out.stderr
        key = out.stdout.splitlines()[-1]
        parsed = parse(key)
        assert parsed is not None
        key_id, secret = parsed
        out = await run(
            _cli, bus_settings, pg_url, "create", "--tenant", "globex", "--role", "admin"
        )
        assert out.returncode == 0, out.stderr

        listed = await run(_cli, bus_settings, pg_url, "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith("KEY_ID")
        mine = [ln for ln in listed.stdout.splitlines() if ln.startswith(key_id)]
        assert len(mine) == 1 and "acme" in mine[0] and "active" in mine[0]
        assert key not in listed.stdout  # never the secret

        out = await run(_cli, bus_settings, pg_url, "revoke", key_id, "--tenant", "globex")
        assert out.returncode == 1 and "no key" in out.stderr  # another tenant's key: no
        out = await run(_cli, bus_settings, pg_url, "revoke", key_id)
        assert out.returncode == 0 and out.stdout.strip() == f"revoked {key_id}", out.stderr
        engine = make_engine(pg_url)
        try:
            stored = await find_key(engine, key_id)
            assert stored is not None and stored.revoked
        finally:
            await engine.dispose()
        listed = await run(_cli, bus_settings, pg_url, "list", "--tenant", "acme")
        assert key_id not in listed.stdout
        listed = await run(_cli, bus_settings, pg_url, "list", "--tenant", "acme", "--revoked")
        assert key_id in listed.stdout and "revoked" in listed.stdout
        for _ in range(50):
            if announced:
                break
            await asyncio.sleep(0.1)
        assert announced == [KeyRevoked(key_id=key_id, tenant="acme")]

        js = nc.jetstream()
        sub = await js.pull_subscribe(bus_settings.subjects.audit_all, durable="check")
        got = [AuditEvent.model_validate_json(m.data) for m in await sub.fetch(20, timeout=5)]
        seen = [(e.action, e.tenant, e.outcome, e.attrs.get("key_id")) for e in got]
        assert ("key.created", "acme", "ok", key_id) in seen
        assert ("key.revoked", "globex", "not_found", key_id) in seen
        assert ("key.revoked", "acme", "ok", key_id) in seen
        assert sum(1 for s in seen if s[0] == "admin.keys.list") >= 4
        for event in got:
            assert event.actor.startswith("cli:") and event.role == "admin"
            assert secret not in orjson.dumps(event.model_dump()).decode()
    finally:
        await nc.close()
