"""The audit service as a real process: killed with SIGKILL mid-stream, it loses and doubles
nothing; and the HTTP API shows each tenant's auditors their own chain only.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import orjson
from sqlalchemy import text

from libs.audit import AuditPublisher, new_event, outbox_dir
from libs.db.engine import make_engine
from libs.settings import Settings
from libs.signing import load_private_key
from services.audit.adapters.keys import HmacKeySource
from services.audit.adapters.sql import AuditStore
from services.audit.service import AuditService
from tests.infra import REPO, Infra, Platform, platform_env

TOTAL = 10_000


async def _count(engine: object) -> int:
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        return int((await conn.execute(text("SELECT count(*) FROM audit_entries"))).scalar_one())


async def test_sigkill_mid_stream_loses_and_doubles_nothing(
    services: Infra, pg_url: str, tmp_path: Path
) -> None:
    env = platform_env(
        services,
        tmp_path,
        0,
        ENCLAVE_DATABASE_URL=pg_url,
        ENCLAVE_AUDIT_ACK_WAIT_S="3",
    )
    plat = Platform(env=env, home=tmp_path, base_url="")
    settings = Settings(
        home=tmp_path,
        nats_url=services.nats_url,
        bus_prefix=env["ENCLAVE_BUS_PREFIX"],
        database_url=pg_url,
    )
    plat.start("audit", "audit")
    engine = make_engine(pg_url)
    nc = await nats.connect(services.nats_url)
    try:
        for _ in range(300):  # the service migrated the schema and made the streams
            try:
                await nc.jetstream().stream_info(settings.subjects.audit_stream_name)
                await _count(engine)
                break
            except Exception:
                await asyncio.sleep(0.1)
        publisher = AuditPublisher(nc, settings.subjects, "test", outbox_dir(tmp_path))
        tenants = ("acme", "globex")
        sent: list[str] = []

        async def publish(i: int) -> None:
            event = new_event(tenants[i % 2], "test", "tick", service="test", attrs={"i": i})
            sent.append(event.id)
            assert await publisher.publish(event)

        async def publish_all() -> None:
            for start in range(0, TOTAL, 250):
                await asyncio.gather(*(publish(i) for i in range(start, start + 250)))

        publishing = asyncio.create_task(publish_all())
        while await _count(engine) < 1500:
            assert plat.procs["audit"].poll() is None, plat.logs()[-3000:]
            await asyncio.sleep(0.05)
        plat.stop("audit", signal.SIGKILL)  # mid-batch, mid-stream
        killed_at = await _count(engine)
        assert killed_at < TOTAL
        print(f"killed at {killed_at} entries")
        await publishing
        plat.start("audit", "audit")
        deadline = time.monotonic() + 45
        while await _count(engine) < TOTAL and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(3.5)  # past the ack wait: any redelivery would show now
        assert await _count(engine) == TOTAL
        async with engine.connect() as conn:
            ids = set((await conn.execute(text("SELECT event_id FROM audit_entries"))).scalars())
        assert ids == set(sent)
        service = AuditService(
            AuditStore(engine),
            HmacKeySource(tmp_path / "audit.key"),
            load_private_key(tmp_path / "audit.ed25519"),
        )
        for tenant in tenants:
            report = await service.verify_report(tenant)
            assert report.ok and report.count == TOTAL // 2, report.summary()
    finally:
        plat.stop_all()
        await nc.close()
        await engine.dispose()
        from tests.audit.conftest import drop_streams

        await drop_streams(settings)


def _get(plat: Platform, key: str, path: str, **params: object) -> httpx.Response:
    return httpx.get(
        plat.base_url + path,
        headers={"Authorization": f"Bearer {key}"},
        params={k: str(v) for k, v in params.items()},
        timeout=60,
    )


def _chat(plat: Platform, key: str) -> str:
    r = httpx.post(
        plat.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "enclave-instant", "messages": [{"role": "user", "content": "my secret"}]},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def _entries_of(plat: Platform, key: str, request_id: str, want: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 30
    while True:
        r = _get(plat, key, "/v1/audit/entries", request_id=request_id)
        assert r.status_code == 200, r.text
        entries = r.json()["entries"]
        if len(entries) >= want or time.monotonic() > deadline:
            return entries  # type: ignore[no-any-return]
        time.sleep(0.2)


def test_auditors_read_their_own_tenant_only(audit_platform: Platform, tmp_path: Path) -> None:
    plat = audit_platform
    acme_admin = plat.admin_key
    acme_auditor = plat.create_key("acme", "auditor")
    globex_admin = plat.create_key("globex", "admin")
    globex_auditor = plat.create_key("globex", "auditor")
    acme_req = _chat(plat, acme_admin)
    globex_req = _chat(plat, globex_admin)

    # The gateway's request event, the guardrails' verdicts on the input and the output,
    # and the runtime's turn event: digests and counts only.
    entries = _entries_of(plat, acme_auditor, acme_req, 4)
    actions = {e["event"]["action"] for e in entries}  # type: ignore[index]
    assert actions == {"chat.completions", "verdict.input", "verdict.output", "turn.completed"}
    for e in entries:
        event = e["event"]
        assert event["tenant"] == "acme"  # type: ignore[index]
        if event["action"].startswith("verdict."):  # type: ignore[index]
            assert event["policy_version"].startswith("global@")  # type: ignore[index]
        else:
            assert event["model"] == "enclave-instant"  # type: ignore[index]
            assert event["digests"]  # type: ignore[index]
    assert b"my secret" not in orjson.dumps(entries)
    assert _entries_of(plat, globex_auditor, globex_req, 4)

    # Tenant B's auditor sees nothing of A, whatever it asks for.
    r = _get(plat, globex_auditor, "/v1/audit/entries", request_id=acme_req, tenant="acme")
    assert r.status_code == 200 and r.json()["entries"] == []
    everything = _get(plat, globex_auditor, "/v1/audit/entries", limit=500).json()["entries"]
    assert everything and {e["event"]["tenant"] for e in everything} == {"globex"}
    export = _get(plat, globex_auditor, "/v1/audit/export", tenant="acme")
    assert export.status_code == 200
    assert b'"tenant":"acme"' not in export.content and b'"tenant":"globex"' in export.content

    # A user or developer key reads no chain at all.
    for role in ("user", "developer"):
        key = plat.create_key("acme", role)
        for path in ("/v1/audit/entries", "/v1/audit/export"):
            r = _get(plat, key, path)
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "insufficient_permissions"
        r = httpx.post(
            plat.base_url + "/v1/audit/verify",
            headers={"Authorization": f"Bearer {key}"},
            json={},
            timeout=30,
        )
        assert r.status_code == 403

    # The auditor verifies online, then exports and verifies offline with either key.
    r = httpx.post(
        plat.base_url + "/v1/audit/verify",
        headers={"Authorization": f"Bearer {acme_auditor}"},
        json={"from_seq": 1},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    bundle = tmp_path / "acme.jsonl"
    bundle.write_bytes(_get(plat, acme_auditor, "/v1/audit/export").content)
    bodies = [
        orjson.loads(line)["body"]
        for line in bundle.read_bytes().splitlines()
        if line.startswith(b'{"body"')
    ]
    count = len(bodies)
    assert count >= 2
    # The auditor's reads are in the chain, this export's record last of all.
    by_action = {b["event"]["action"]: b["event"] for b in bodies}
    assert by_action["audit.read"]["role"] == "auditor"
    assert by_action["audit.verify"]["outcome"] == "ok"
    export_record = bodies[-1]["event"]
    assert export_record["action"] == "audit.export" and export_record["role"] == "auditor"
    assert export_record["actor"] and export_record["request_id"]
    for args in (
        ["--key-file", str(plat.home / "audit.key")],
        ["--public-key", str(plat.home / "audit.pub")],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "services.cli", "audit", "verify", str(bundle), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and out.stdout.startswith(f"OK: {count} entries"), out.stdout

    # The CLI exports from the database too (no NATS needed), and the bundle verifies.
    out_file = tmp_path / "cli.jsonl"
    plat.cli("audit", "export", "--tenant", "globex", "--out", str(out_file))
    out = subprocess.run(
        [
            *(sys.executable, "-m", "services.cli", "audit", "verify", str(out_file)),
            *("--public-key", str(plat.home / "audit.pub")),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout
