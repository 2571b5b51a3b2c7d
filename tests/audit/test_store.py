"""The chain in PostgreSQL and SQLite: append-only, idempotent, one order with replicas,
and tampering done behind the service's back (triggers bypassed) named at the first bad entry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from libs.audit import AuditPublisher, outbox_dir
from libs.db.engine import make_engine, migrate_async
from libs.events import AuditEvent
from libs.settings import Settings
from libs.signing import load_private_key
from services.audit.adapters.keys import HmacKeySource, ensure_keys
from services.audit.adapters.sql import AuditStore
from services.audit.chain import HmacKeys, seal
from services.audit.service import AuditService
from tests.audit.helpers import events

N = 30


async def make_service(url: str, home: Path) -> AuditService:
    await migrate_async(Settings(home=home, database_url=url))
    ensure_keys(home / "audit.key", home / "audit.ed25519", home / "audit.pub")
    return AuditService(
        AuditStore(make_engine(url)),
        HmacKeySource(home / "audit.key"),
        load_private_key(home / "audit.ed25519"),
    )


def typed(raw: list[dict[str, object]]) -> list[AuditEvent]:
    return [AuditEvent.model_validate(e) for e in raw]


@pytest.fixture
async def pg_service(pg_url: str, tmp_path: Path) -> AsyncIterator[AuditService]:
    service = await make_service(pg_url, tmp_path)
    yield service
    await service.store.engine.dispose()


async def test_append_is_idempotent_and_keeps_order(pg_service: AuditService) -> None:
    batch = events(N)
    await pg_service.append(typed(batch))
    # Redelivered, and the same event twice in one batch: each appears once.
    more = events(5, start=N)
    result = await pg_service.append(typed(batch[:10] + more + more[:1]))
    assert result[0].entries == 5 and result[0].duplicates == 11
    assert await pg_service.store.count("acme") == N + 5
    rows = await pg_service.store.page("acme", 0, 10_000, 10_000)
    assert [r.seq for r in rows] == list(range(1, N + 6))
    assert [r.event["id"] for r in rows] == [e["id"] for e in batch + more]
    report = await pg_service.verify_report("acme")
    assert report.ok and report.count == N + 5


async def test_tenants_have_separate_chains(pg_service: AuditService) -> None:
    await pg_service.append(typed(events(3, "acme") + events(4, "globex") + events(2, "acme")))
    assert await pg_service.store.head("acme") == (5, (await pg_service.store.head("acme"))[1])
    assert (await pg_service.store.head("globex"))[0] == 4
    assert (await pg_service.verify_report("globex")).ok


async def _refused(engine: object, statement: str) -> None:
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(text(statement))


async def test_postgres_refuses_update_delete_truncate(pg_service: AuditService) -> None:
    await pg_service.append(typed(events(3)))
    await pg_service.checkpoint("acme")
    engine = pg_service.store.engine
    await _refused(engine, "UPDATE audit_entries SET actor = 'x' WHERE seq = 2")
    await _refused(engine, "DELETE FROM audit_entries WHERE seq = 3")
    await _refused(engine, "TRUNCATE audit_entries")
    await _refused(engine, "DELETE FROM audit_checkpoints")
    assert await pg_service.store.count("acme") == 3
    assert (await pg_service.verify_report("acme")).ok


async def test_sqlite_refuses_update_and_delete(tmp_path: Path) -> None:
    service = await make_service(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", tmp_path)
    try:
        await service.append(typed(events(3)))
        await _refused(service.store.engine, "UPDATE audit_entries SET actor = 'x'")
        await _refused(service.store.engine, "DELETE FROM audit_entries")
        assert (await service.verify_report("acme")).ok
    finally:
        await service.store.engine.dispose()


async def _as_dba(service: AuditService, *statements: str) -> None:
    """Edit the table as a superuser who switched the triggers off."""
    async with service.store.engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            await conn.execute(text(statement))


def _forged_row(service: AuditService, seq: int, prev: str) -> str:
    event = events(1, start=999)[0]
    kid = service.keys.current().active  # the real key id, but not the real key
    entry = seal("acme", seq, prev, event, HmacKeys({kid: b"x" * 32}, kid))
    e = entry.event
    return (
        "INSERT INTO audit_entries (tenant, seq, event_id, kind, action, actor, request_id, "
        "time, prev_hash, hash, hmac, key_id, payload) VALUES ('acme', "
        f"{seq}, '{e['id']}', '{e['kind']}', '{e['action']}', '{e['actor']}', "
        f"'{e['request_id']}', '{e['time']}', '{prev}', '{entry.hash}', '{entry.hmac}', "
        f"'{kid}', '{json.dumps(e)}')"
    )


@pytest.mark.parametrize("tamper", ["modify", "delete", "reorder", "insert", "truncate"])
async def test_tampering_in_the_database_is_named(pg_service: AuditService, tamper: str) -> None:
    await pg_service.append(typed(events(N)))
    await pg_service.checkpoint("acme")
    assert (await pg_service.verify_report("acme")).ok
    expect: tuple[int, str]
    if tamper == "modify":
        await _as_dba(
            pg_service,
            "UPDATE audit_entries SET actor = 'nobody', payload = "
            '(payload::jsonb || \'{"actor": "nobody"}\')::json WHERE seq = 7',
        )
        expect = (7, "hash mismatch")
    elif tamper == "delete":
        await _as_dba(pg_service, "DELETE FROM audit_entries WHERE seq = 9")
        expect = (9, "entry 9 is missing")
    elif tamper == "reorder":
        await _as_dba(
            pg_service,
            "UPDATE audit_entries SET seq = -1 WHERE seq = 4",
            "UPDATE audit_entries SET seq = 4 WHERE seq = 5",
            "UPDATE audit_entries SET seq = 5 WHERE seq = -1",
        )
        expect = (4, "hash mismatch")
    elif tamper == "insert":
        _, head = await pg_service.store.head("acme")
        await _as_dba(pg_service, _forged_row(pg_service, N + 1, head))
        expect = (N + 1, "HMAC mismatch")
    else:
        await _as_dba(pg_service, f"DELETE FROM audit_entries WHERE seq > {N - 3}")
        expect = (N - 2, "truncated")
    report = await pg_service.verify_report("acme")
    assert not report.ok and report.problem is not None, report.summary()
    assert report.problem.seq == expect[0], report.summary()
    assert expect[1] in report.problem.reason, report.summary()


async def test_search_column_edits_are_caught(pg_service: AuditService) -> None:
    await pg_service.append(typed(events(5)))
    await _as_dba(pg_service, "UPDATE audit_entries SET request_id = 'req-x' WHERE seq = 3")
    report = await pg_service.verify_report("acme")
    assert report.problem is not None and report.problem.seq == 3
    assert "request_id column" in report.problem.reason


async def test_replicas_append_one_gapless_chain(pg_url: str, tmp_path: Path) -> None:
    a = await make_service(pg_url, tmp_path)
    b = await make_service(pg_url, tmp_path)
    try:
        all_events = events(400)
        batches = [all_events[i : i + 20] for i in range(0, 400, 20)]

        async def replica(service: AuditService, mine: list[list[dict[str, object]]]) -> None:
            for batch in mine:
                await service.append(typed(batch))

        # Both replicas get every other batch, and a few batches twice (redelivery).
        await asyncio.gather(
            replica(a, batches[0::2] + batches[1:4]), replica(b, batches[1::2] + batches[0:3])
        )
        assert await a.store.count("acme") == 400
        report = await a.verify_report("acme")
        assert report.ok and report.last_seq == 400, report.summary()
    finally:
        await a.store.engine.dispose()
        await b.store.engine.dispose()


async def test_publisher_keeps_events_on_disk_until_the_bus_is_back(
    bus_settings: Settings,
) -> None:
    outbox = outbox_dir(bus_settings.home)
    away = await nats.connect(bus_settings.nats_url)
    await away.close()  # a client that lost its server
    publisher = AuditPublisher(away, bus_settings.subjects, "gateway", outbox)
    sent = [await publisher.emit("chat.completions", tenant="acme") for _ in range(3)]
    assert publisher.outbox_size() == 3
    nc = await nats.connect(bus_settings.nats_url)
    try:
        publisher.nc = nc
        publisher.start()
        for _ in range(50):
            if publisher.outbox_size() == 0:
                break
            await asyncio.sleep(0.1)
        assert publisher.outbox_size() == 0
        await publisher.close()
        js = nc.jetstream()
        info = await js.stream_info(bus_settings.subjects.audit_stream_name)
        assert info.state.messages == 3
        sub = await js.pull_subscribe(bus_settings.subjects.audit_all, durable="check")
        got = [AuditEvent.model_validate_json(m.data).id for m in await sub.fetch(3, timeout=5)]
        assert got == [e.id for e in sent]  # in the order they happened
    finally:
        await nc.close()
