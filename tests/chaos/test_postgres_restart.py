"""A restart of PostgreSQL under a running platform, with real processes: chats go on
(keys are cached, the audit trail waits on JetStream), and once the database is back the
audit chain holds exactly one entry per chat request made before, during and after the
restart: nothing lost, nothing doubled.

The platform runs on a private PostgreSQL cluster of its own (initdb in a temporary
directory, a free port, a generated password), never on the cluster other tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.chaos.test_nats_restart import _chat, _entries
from tests.infra import Infra, Platform, free_port, platform_env

BEFORE, AFTER = 5, 5


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


class Postgres:
    """A throwaway cluster, run as the `postgres` user when the tests run as root."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="enclave-pg-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True)

    def init(self) -> None:
        data = self.dir / "data"
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
            shutil.chown(pwfile, "postgres")
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
        )
        pwfile.unlink()

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"
        )

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed")
    pg = Postgres(bin_dir)
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop()
        pg.remove()


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def test_a_postgres_restart_loses_and_doubles_no_audit_entry(
    services: Infra, postgres: Postgres, tmp_path: Path
) -> None:
    asyncio.run(_create_database(postgres.admin_url, "enclave"))
    base = postgres.admin_url.rsplit("/", 1)[0]
    db_url = base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/enclave"
    port = free_port()
    env = platform_env(
        services, tmp_path, port, ENCLAVE_DATABASE_URL=db_url, ENCLAVE_AUDIT_ACK_WAIT_S="3"
    )
    plat = Platform(env=env, home=tmp_path, base_url=f"http://127.0.0.1:{port}")
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
        for _ in range(BEFORE):
            status, request_id = _chat(plat)
            assert status == 200 and request_id, status
            made.append(request_id)

        postgres.stop()
        # The key is cached and the trail waits on JetStream: chats go on meanwhile.
        for _ in range(3):
            status, request_id = _chat(plat)
            assert status == 200 and request_id, (status, plat.logs()[-3000:])
            made.append(request_id)
        postgres.start()

        for _ in range(AFTER):
            status, request_id = _chat(plat)
            assert status == 200 and request_id, (status, plat.logs()[-3000:])
            made.append(request_id)

        deadline = time.monotonic() + 90
        while True:
            entries = asyncio.run(_entries(db_url))
            if all(entries[r] >= 1 for r in made) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(4)  # past the audit consumer's ack wait: a redelivery would show now
        entries = asyncio.run(_entries(db_url))
        missing = [r for r in made if entries[r] == 0]
        doubled = {r: n for r, n in entries.items() if n > 1}
        assert not missing, (missing, plat.logs()[-3000:])
        assert not doubled, doubled
    finally:
        plat.stop_all()
