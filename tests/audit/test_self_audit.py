"""What the platform records about itself (issue 11): reads and exports of the chain, key
creation and revocation, admin actions, and turns redelivered or dropped."""

from __future__ import annotations

from pathlib import Path

from libs.audit import (
    PLATFORM_TENANT,
    AuditPublisher,
    operator_context,
    record_admin_action,
    record_key_created,
    record_key_revoked,
    record_turn_dropped,
    record_turn_redelivered,
)
from libs.context import RequestContext
from libs.events import (
    AuditActions,
    AuditEvent,
    AuditExportRequest,
    AuditSearch,
    AuditVerifyRequest,
)
from libs.settings import Settings
from tests.audit.helpers import events
from tests.audit.test_store import make_service, typed

AUDITOR = RequestContext(tenant="acme", request_id="req-1", actor="key_auditor", role="auditor")


async def test_reads_verifies_and_exports_of_the_chain_are_in_the_chain(tmp_path: Path) -> None:
    service = await make_service(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", tmp_path)
    try:
        await service.append(typed(events(5)))
        await service.search(AuditSearch(tenant="acme", ctx=AUDITOR, actor="key1", limit=10))
        reply = await service.verify(AuditVerifyRequest(tenant="acme", ctx=AUDITOR))
        assert reply.ok
        start = await service.export_page(AuditExportRequest(tenant="acme", ctx=AUDITOR))
        lines: list[bytes] = []
        await service.export("acme", lines.append)  # the CLI's export: no API key
        entries = await service.store.page("acme", 0, 100, 100)
        assert [e.event["action"] for e in entries[5:]] == [
            AuditActions.AUDIT_READ,
            AuditActions.AUDIT_VERIFY,
            AuditActions.AUDIT_EXPORT,
            AuditActions.AUDIT_EXPORT,
        ]
        read, verify, export, cli = (e.event for e in entries[5:])
        for event in (read, verify, export):
            assert (event["actor"], event["role"], event["request_id"]) == (
                "key_auditor",
                "auditor",
                "req-1",
            )
        assert read["attrs"] == {"actor": "key1", "after_seq": 0, "limit": 10}
        assert verify["attrs"] == {"from_seq": 1, "count": 6} and verify["outcome"] == "ok"
        assert start.count == 8  # the export's checkpoint covers its own record
        assert cli["actor"].startswith("cli:") and cli["attrs"] == {"via": "cli"}
        assert b'"action":"audit.export"' in b"".join(lines)
    finally:
        await service.store.engine.dispose()


def _outbox_events(publisher: AuditPublisher) -> list[AuditEvent]:
    return [
        AuditEvent.model_validate_json(p.read_bytes())
        for p in sorted(publisher.outbox.iterdir())
        if p.suffix == ".json"
    ]


async def test_the_helpers_record_keys_admin_actions_and_turns(tmp_path: Path) -> None:
    # No bus: each event is kept in the outbox, where it can be read back as it would go.
    publisher = AuditPublisher(None, Settings(home=tmp_path).subjects, "gateway", tmp_path / "o")
    admin = RequestContext(tenant="acme", request_id="req-9", actor="key_admin", role="admin")
    await record_key_created(
        publisher, admin, key_id="key_new", tenant="acme", role="user", rate_limit_rpm=60
    )
    await record_key_revoked(publisher, admin, key_id="key_new", tenant="acme", found=True)
    await record_key_revoked(publisher, admin, key_id="key_nope", tenant="acme", found=False)
    await record_admin_action(publisher, admin, "tenant_data.delete", attrs={"memories": 3})
    await record_turn_redelivered(publisher, admin, delivery=2, model="enclave-instant")
    await record_turn_dropped(publisher, admin, reason="client_gone", delivery=3)
    await record_turn_dropped(publisher, None, reason="unreadable", content=b"\xff garbage")
    got = _outbox_events(publisher)
    assert [(e.action, e.kind, e.tenant, e.outcome) for e in got] == [
        ("key.created", "keys", "acme", "ok"),
        ("key.revoked", "keys", "acme", "ok"),
        ("key.revoked", "keys", "acme", "not_found"),
        ("admin.tenant_data.delete", "admin", "acme", "ok"),
        ("turn.redelivered", "gateway", "acme", "ok"),
        ("turn.dropped", "gateway", "acme", "dropped"),
        ("turn.dropped", "gateway", PLATFORM_TENANT, "dropped"),
    ]
    assert got[0].attrs == {"key_id": "key_new", "key_role": "user", "rate_limit_rpm": 60}
    assert got[0].actor == "key_admin" and got[0].request_id == "req-9"
    assert got[4].attrs == {"delivery": 2} and got[4].model == "enclave-instant"
    assert got[5].attrs == {"reason": "client_gone", "delivery": 3}
    assert got[6].digests["message"].startswith("sha256:") and got[6].actor == ""
    cli = operator_context("acme")
    assert cli.actor.startswith("cli:") and cli.role == "admin" and cli.tenant == "acme"
    await publisher.close()
