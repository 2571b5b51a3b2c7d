"""The sandbox service in process, over the real NATS: request/reply on sandbox.exec, and
one audit event per exec (tool, code digest, outcome, duration) on audit.<tenant>.sandbox."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from libs.audit import digest
from libs.bus import event_bytes
from libs.events import AuditEvent, SandboxExecReply
from libs.rpc import Bus
from libs.service import running
from libs.settings import Settings
from services.sandbox.bootstrap import build
from tests.audit.conftest import drop_streams
from tests.infra import Infra
from tests.sandbox.conftest import request


@pytest.fixture
async def service(services: Infra, tmp_path: Path) -> AsyncIterator[tuple[Settings, Client]]:
    settings = Settings(
        home=tmp_path,
        nats_url=services.nats_url,
        bus_prefix=f"t{secrets.token_hex(4)}",
        sandbox_max_timeout_s=10,
        sandbox_concurrency=2,
    )
    try:
        async with running(settings, "sandbox", build):
            nc = await nats.connect(settings.nats_url)
            try:
                yield settings, nc
            finally:
                await nc.drain()
    finally:
        await drop_streams(settings)


async def ask(nc: Client, settings: Settings, data: bytes) -> SandboxExecReply:
    """The reply as the platform's callers read it (`Bus.ask` of the watched sandbox peer:
    the replica's "accepted", then its reply; an error as the reply's)."""
    bus = Bus(nc, settings)
    return await bus.ask(
        bus.peers.sandbox(20),
        settings.subjects.sandbox_exec,
        data,
        SandboxExecReply,
        failed=lambda error: SandboxExecReply(error=error),
    )


async def test_exec_over_the_bus_is_answered_and_audited(
    service: tuple[Settings, Client],
) -> None:
    settings, nc = service
    audits: list[AuditEvent] = []

    async def on_audit(msg: Msg) -> None:
        audits.append(AuditEvent.model_validate_json(msg.data))

    await nc.subscribe(settings.subjects.audit("acme", "sandbox"), cb=on_audit)
    code = "import sys\nprint(open('in.txt').read().upper())\nsys.exit(2)"
    req = request("python", code, {"in.txt": "hello"}, tool="code_interpreter")
    reply = await ask(nc, settings, event_bytes(req))
    assert (reply.status, reply.exit_code, reply.stdout) == ("error", 2, "HELLO\n")
    for _ in range(100):
        if audits:
            break
        await asyncio.sleep(0.05)
    (event,) = audits
    assert (event.tenant, event.kind, event.action) == ("acme", "sandbox", "exec")
    assert event.request_id == req.ctx.request_id
    assert event.outcome == "error"
    assert event.digests == {"code": digest(code)}  # the code's digest, never the code
    assert event.attrs["tool"] == "code_interpreter"
    assert event.attrs["exit_code"] == 2 and event.attrs["files_in"] == 1
    assert isinstance(event.attrs["duration_ms"], int) and event.attrs["duration_ms"] > 0
    assert "HELLO" not in event.model_dump_json()


async def test_runs_concurrently_and_refuses_bad_requests(
    service: tuple[Settings, Client],
) -> None:
    settings, nc = service
    # Two slots: four one-second sleeps take about two seconds, not four.
    started = asyncio.get_running_loop().time()
    replies = await asyncio.gather(
        *(ask(nc, settings, event_bytes(request("bash", f"sleep 1; echo {i}"))) for i in range(4))
    )
    took = asyncio.get_running_loop().time() - started
    assert [r.stdout for r in replies] == [f"{i}\n" for i in range(4)]
    assert took < 3.8
    too_long = await ask(nc, settings, event_bytes(request("bash", "true", timeout_s=11)))
    assert too_long.error is not None and too_long.error.param == "timeout_s"
    garbage = await ask(nc, settings, b'{"language": "cobol"}')
    assert garbage.error is not None and garbage.error.status == 400


async def test_a_replica_past_its_queue_says_it_is_busy(
    service: tuple[Settings, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.sandbox import bootstrap

    settings, nc = service
    monkeypatch.setattr(bootstrap, "QUEUE_PER_SLOT", 1)  # 2 slots: 2 runs at most, none queued
    replies = await asyncio.gather(
        *(ask(nc, settings, event_bytes(request("bash", "sleep 1"))) for _ in range(3))
    )
    busy = [r for r in replies if r.error is not None]
    assert len(busy) == 1 and busy[0].error is not None
    assert (busy[0].error.status, busy[0].error.code) == (503, "sandbox_busy")
    assert sorted(r.status for r in replies if r.error is None) == ["ok", "ok"]


async def test_busy_ratio_and_queue_depth_follow_the_runs(
    service: tuple[Settings, Client],
) -> None:
    """What KEDA's trigger for the sandbox reads (deploy/helm): with 2 slots and 4 runs in
    flight, the replica is fully busy with 2 queued; idle again once they are answered,
    and every exec counted."""
    settings, nc = service
    labels = {"service": "sandbox", "pool": ""}

    def sample(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    def execs() -> float:
        ok = {"service": "sandbox", "operation": "sandbox.exec", "code": "200"}
        return REGISTRY.get_sample_value("enclave_requests_total", ok) or 0.0

    before = execs()
    runs = asyncio.gather(
        *(ask(nc, settings, event_bytes(request("bash", "sleep 3"))) for _ in range(4))
    )
    seen: list[tuple[float | None, float | None]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline and not runs.done():
        seen.append((sample("enclave_busy_ratio"), sample("enclave_queue_depth")))
        if seen[-1] == (1.0, 2.0):
            break
        await asyncio.sleep(0.05)
    assert seen and seen[-1] == (1.0, 2.0), seen
    replies = await runs
    assert [r.status for r in replies] == ["ok"] * 4
    assert (sample("enclave_busy_ratio"), sample("enclave_queue_depth")) == (0.0, 0.0)
    assert execs() == before + 4
