"""A restart of nats-server under a running platform, with real processes: every service
reconnects, the platform serves again, and the audit chain holds exactly one entry per
chat request made (before, during and after the restart): nothing lost, nothing doubled.

The platform runs on a private nats-server of its own (its JetStream store under the
test's directory), never on the NATS the other tests share.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from libs.db.engine import make_engine
from tests.infra import Infra, Platform, free_port, platform_env

BEFORE, AFTER = 5, 5


class NatsServer:
    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.parent / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while "Server is ready" not in self.log.read_text(errors="replace").split("Starting")[-1]:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    yield server
    server.stop()


def _chat(plat: Platform) -> tuple[int, str | None]:
    """One chat: its status, and its request id when the gateway gave one."""
    try:
        r = httpx.post(
            plat.base_url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {plat.admin_key}"},
            json={"model": "enclave-instant", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
    except httpx.TransportError:
        return 0, None
    return r.status_code, r.headers.get("x-request-id")


async def _entries(pg_url: str) -> Counter[str]:
    """The gateway's audit entries of chat requests, by request id."""
    engine = make_engine(pg_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT request_id FROM audit_entries WHERE action = 'chat.completions'")
            )
            return Counter(str(r) for r in rows.scalars())
    finally:
        await engine.dispose()


def test_a_nats_restart_loses_and_doubles_no_audit_entry(
    services: Infra, pg_url: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    private = Infra(
        nats_url=nats_server.url,
        redis_url=services.redis_url,
        postgres_admin_url=services.postgres_admin_url,
    )
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = platform_env(private, home, port, ENCLAVE_DATABASE_URL=pg_url)
    plat = Platform(env=env, home=home, base_url=f"http://127.0.0.1:{port}")
    plat.cli("migrate")
    plat.admin_key = plat.create_key("acme", "admin", rpm=1_000_000)
    try:
        for name, service, pool in (
            ("router", "inference_router", None),
            ("worker-instant", "worker", "instant"),
            ("guardrails", "guardrails", None),
            ("runtime", "agent_runtime", None),
            ("audit", "audit", None),
            ("gateway", "gateway", None),
        ):
            plat.start(name, service, pool)
        plat.wait_ready()
        plat.wait_model("enclave-instant")
        made: list[str] = []
        # wait_model's own chats are audited too: count from here on by request id.
        for _ in range(BEFORE):
            status, request_id = _chat(plat)
            assert status == 200 and request_id, status
            made.append(request_id)

        nats_server.stop()
        # While the bus is down: the requests are refused (503/504), and audited all the same
        # (the gateway's outbox keeps them until the bus is back).
        status, request_id = _chat(plat)
        assert status in (503, 504), status
        if request_id:
            made.append(request_id)
        nats_server.start()

        deadline = time.monotonic() + 120
        while True:  # every service reconnects; until a chat passes again
            status, request_id = _chat(plat)
            if request_id:
                made.append(request_id)
            if status == 200:
                break
            assert status in (0, 503, 504), status
            assert time.monotonic() < deadline, plat.logs()[-4000:]
            time.sleep(0.5)
        for _ in range(AFTER):
            status, request_id = _chat(plat)
            assert status == 200 and request_id, (status, plat.logs()[-3000:])
            made.append(request_id)

        deadline = time.monotonic() + 90
        while True:
            entries = asyncio.run(_entries(pg_url))
            if all(entries[r] >= 1 for r in made) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(3)  # past any redelivery
        entries = asyncio.run(_entries(pg_url))
        missing = [r for r in made if entries[r] == 0]
        doubled = {r: n for r, n in entries.items() if n > 1}
        assert not missing, (missing, plat.logs()[-3000:])
        assert not doubled, doubled
    finally:
        plat.stop_all()
