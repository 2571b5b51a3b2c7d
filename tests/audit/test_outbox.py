"""Bounded audit events, and an outbox that a poisoned event cannot block (issue 11)."""

from __future__ import annotations

import time
from pathlib import Path

import nats
import orjson

from libs.audit import (
    FIELD_CLIP,
    MAX_EVENT_BYTES,
    PLATFORM_TENANT,
    QUARANTINED,
    Audit,
    AuditPublisher,
    bound_event,
    new_event,
    outbox_dir,
)
from libs.events import AuditEvent
from libs.settings import Settings
from tests.audit.test_store import make_service


def test_an_event_over_the_bound_is_clipped_with_a_record() -> None:
    small = new_event("acme", "gateway", "chat.completions", model="enclave-instant")
    assert bound_event(small)[0] is small
    huge = new_event(
        "acme", "gateway", "chat.completions", model="m" * (1 << 20), attrs={"path": "/v1"}
    )
    clipped, data = bound_event(huge)
    assert len(data) <= MAX_EVENT_BYTES
    assert (clipped.id, clipped.tenant, clipped.action) == (huge.id, "acme", "chat.completions")
    assert clipped.model is not None and len(clipped.model) == FIELD_CLIP
    assert clipped.attrs["clipped"] is True and clipped.attrs["path"] == "/v1"
    assert int(clipped.attrs["oversize_bytes"]) > 1 << 20
    assert clipped.digests["oversize_event"].startswith("sha256:")
    # Bulky attrs give way to the record alone.
    many = new_event("acme", "gateway", "x", attrs={f"a{i}": "v" * 200 for i in range(200)})
    clipped, data = bound_event(many)
    assert len(data) <= MAX_EVENT_BYTES and set(clipped.attrs) == {"oversize_bytes", "clipped"}


async def test_the_service_clips_what_a_publisher_did_not(tmp_path: Path) -> None:
    service = await make_service(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", tmp_path)
    try:
        huge = new_event("acme", "gateway", "chat.completions", model="m" * 100_000)
        await service.append([huge])
        (entry,) = await service.store.page("acme", 0, 1, 10)
        assert entry.event["id"] == huge.id and entry.event["attrs"]["clipped"] is True
        assert len(entry.line()) < MAX_EVENT_BYTES + 1024
    finally:
        await service.store.engine.dispose()


async def _stream_events(nc: nats.NATS, settings: Settings, n: int) -> list[AuditEvent]:
    sub = await nc.jetstream().pull_subscribe(settings.subjects.audit_all, durable="check")
    return [AuditEvent.model_validate_json(m.data) for m in await sub.fetch(n, timeout=5)]


async def test_a_huge_model_name_reaches_the_stream_clipped(bus_settings: Settings) -> None:
    nc = await nats.connect(bus_settings.nats_url)
    try:
        publisher = AuditPublisher(
            nc, bus_settings.subjects, "gateway", outbox_dir(bus_settings.home)
        )
        event = await publisher.emit("chat.completions", tenant="acme", model="m" * (1 << 20))
        assert publisher.outbox_size() == 0  # not kept whole on disk either
        (got,) = await _stream_events(nc, bus_settings, 1)
        assert got.id == event.id and got.model == "m" * (FIELD_CLIP - 1) + "…"
        assert got.attrs["clipped"] is True
        await publisher.close()
    finally:
        await nc.close()


async def test_a_poisoned_outbox_event_is_quarantined_and_the_rest_goes(
    bus_settings: Settings,
) -> None:
    nc = await nats.connect(bus_settings.nats_url)
    js = nc.jetstream()
    name = bus_settings.subjects.audit_stream_name
    config = (await js.stream_info(name)).config
    config.max_msg_size = 8192  # the server refuses bigger messages: a real poison
    await js.update_stream(config)
    outbox = outbox_dir(bus_settings.home)
    outbox.mkdir(parents=True)

    def keep(i: int, event_id: str, data: bytes) -> Path:
        path = outbox / f"{i:020d}-{event_id}.json"
        path.write_bytes(data)
        return path

    first = new_event("acme", "gateway", "chat.completions")
    poison = new_event("acme", "gateway", "chat.completions", attrs={"x": "p" * 12000})
    whole = new_event("globex", "gateway", "chat.completions", model="m" * 100_000)
    last = new_event("acme", "gateway", "chat.completions")
    keep(1, first.id, first.model_dump_json().encode())
    keep(2, poison.id, poison.model_dump_json().encode())
    keep(3, "junk", b"{not an audit event")
    keep(4, whole.id, whole.model_dump_json().encode())  # written whole by an old version
    keep(5, last.id, last.model_dump_json().encode())
    publisher = AuditPublisher(nc, bus_settings.subjects, "gateway", outbox)
    try:
        assert await publisher.flush_outbox() == 3
        assert publisher.outbox_size() == 0
        assert sorted(p.name for p in publisher.quarantine.iterdir()) == [
            f"{2:020d}-{poison.id}.json",
            f"{3:020d}-junk.json",
            f"{4:020d}-{whole.id}.whole.json",
        ]
        assert publisher.quarantined() == 3  # the clipped one's original is kept aside too
        got = await _stream_events(nc, bus_settings, 5)
        passed = [e for e in got if e.action != QUARANTINED]
        assert [e.id for e in passed] == [first.id, whole.id, last.id]  # in order
        assert passed[1].attrs["clipped"] is True
        records = {e.attrs["event_id"]: e for e in got if e.action == QUARANTINED}
        refused = records[poison.id]
        assert refused.tenant == "acme" and "refused by the bus" in str(refused.attrs["reason"])
        assert refused.digests["event"].startswith("sha256:")
        unreadable = records[""]
        assert unreadable.tenant == PLATFORM_TENANT
        assert "not an audit event" in str(unreadable.attrs["reason"])
        assert orjson.loads((publisher.quarantine / f"{2:020d}-{poison.id}.json").read_bytes())
    finally:
        await publisher.close()
        await nc.close()


async def test_a_bootstrap_audit_object_reports_its_publishers_outboxes(tmp_path: Path) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    audit = Audit(MeterProvider(metric_readers=[reader]).get_meter("enclave.audit"))
    subjects = Settings(home=tmp_path).subjects
    gateway = AuditPublisher(None, subjects, "gateway", tmp_path / "a", audit=audit)
    runtime = AuditPublisher(None, subjects, "runtime", tmp_path / "b", audit=audit)
    for _ in range(2):
        await gateway.emit("chat.completions", tenant="acme")  # no bus: kept on disk
    await runtime.emit("turn.completed", tenant="acme")
    (runtime.quarantine).mkdir()
    (runtime.quarantine / "x.json").write_bytes(b"{}")
    data = reader.get_metrics_data()
    assert data is not None
    seen = {
        (m.name, dict(p.attributes or {})["service"]): getattr(p, "value", None)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
    }
    assert seen == {
        ("enclave.audit.outbox_size", "gateway"): 2,
        ("enclave.audit.outbox_size", "runtime"): 1,
        ("enclave.audit.outbox_quarantined", "gateway"): 0,
        ("enclave.audit.outbox_quarantined", "runtime"): 1,
    }
    await gateway.close()
    assert audit.publishers == [runtime]


async def test_an_event_that_keeps_failing_while_others_pass_is_quarantined(
    bus_settings: Settings,
) -> None:
    nc = await nats.connect(bus_settings.nats_url)
    js = nc.jetstream()
    subjects = bus_settings.subjects
    config = (await js.stream_info(subjects.audit_stream_name)).config
    config.subjects = [subjects.audit("acme", "*")]  # globex's events find no stream
    await js.update_stream(config)
    outbox = outbox_dir(bus_settings.home)
    publisher = AuditPublisher(nc, subjects, "gateway", outbox, ack_timeout_s=0.5)
    try:
        stuck = await publisher.emit("chat.completions", tenant="globex")
        assert publisher.outbox_size() == 1
        for strike in range(3):
            assert publisher.quarantined() == 0, strike
            await publisher.emit("chat.completions", tenant="acme")  # goes straight out
            (outbox / f"{time.time_ns():020d}-late.json").write_bytes(
                new_event("acme", "gateway", "late").model_dump_json().encode()
            )
            assert await publisher.flush_outbox() == 1  # the acme one behind the stuck one
        names = [p.name for p in publisher.quarantine.iterdir()]
        assert len(names) == 1 and names[0].endswith(f"-{stuck.id}.json")
        # Its record is for globex too, so it waits in the outbox, and never blocks.
        (record,) = [AuditEvent.model_validate_json(p.read_bytes()) for p in outbox.glob("*.json")]
        assert record.action == QUARANTINED and record.attrs["event_id"] == stuck.id
        assert "failed 3 sends" in str(record.attrs["reason"])
    finally:
        await publisher.close()
        await nc.close()
