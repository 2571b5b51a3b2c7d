"""Audit benchmark: sustained append rate on PostgreSQL and offline verification rate.

    python -m bench.audit        (needs PostgreSQL on 127.0.0.1:5432 and NATS on 4222)

Rows: appends through the store (one transaction per tenant batch), the whole service
draining a JetStream backlog (pull batches -> append -> ack), and `enclave audit verify`
on an exported bundle (HMAC + Ed25519 checkpoints).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import nats
from sqlalchemy import text

from libs.audit import AuditPublisher, new_event, outbox_dir
from libs.bus import ensure_streams, stream_configs
from libs.db.engine import make_engine, migrate_async
from libs.events import AuditEvent
from libs.settings import Settings
from libs.signing import load_private_key
from services.audit.adapters.keys import HmacKeySource, ensure_keys
from services.audit.adapters.sql import AuditStore
from services.audit.cli import verify_file
from services.audit.service import AuditService

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("ENCLAVE_NATS_URL", "nats://127.0.0.1:4222")
TARGET_APPEND = 5_000
TARGET_VERIFY = 200_000


def _events(n: int, tenants: int) -> list[AuditEvent]:
    return [
        new_event(
            f"tenant{i % tenants}",
            "gateway",
            "chat.completions",
            service="gateway",
            actor="key0123456789abcd",
            request_id=f"req-{secrets.token_hex(12)}",
            model="smollm2-135m-instruct",
            digests={"request": "sha256:" + secrets.token_hex(32)},
            attrs={"path": "/v1/chat/completions"},
        )
        for i in range(n)
    ]


async def _database() -> tuple[str, str]:
    name = f"enclave_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return name, f"{base}/{name}"


async def _drop(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def bench_store(home: Path, n: int, tenants: int, batch: int) -> float:
    name, url = await _database()
    try:
        await migrate_async(Settings(home=home, database_url=url))
        service = AuditService(
            AuditStore(make_engine(url)),
            HmacKeySource(home / "audit.key"),
            load_private_key(home / "audit.ed25519"),
        )
        events = _events(n, tenants)
        await service.append(events[:batch])  # warm the pool
        start = time.perf_counter()
        for i in range(batch, n, batch):
            await service.append(events[i : i + batch])
        elapsed = time.perf_counter() - start
        assert (await service.verify_report("tenant0")).ok
        await service.store.engine.dispose()
        return (n - batch) / elapsed
    finally:
        await _drop(name)


async def bench_service(home: Path, n: int) -> float:
    name, url = await _database()
    settings = Settings(home=home, nats_url=NATS_URL, bus_prefix=f"b{secrets.token_hex(4)}")
    nc = await nats.connect(NATS_URL)
    proc = None
    try:
        await ensure_streams(nc, settings)
        publisher = AuditPublisher(nc, settings.subjects, "bench", outbox_dir(home))
        events = _events(n, 4)
        for i in range(0, n, 500):
            await asyncio.gather(*(publisher.publish(e) for e in events[i : i + 500]))
        env = {
            **os.environ,
            "ENCLAVE_HOME": str(home),
            "ENCLAVE_NATS_URL": NATS_URL,
            "ENCLAVE_BUS_PREFIX": settings.bus_prefix,
            "ENCLAVE_DATABASE_URL": url,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "audit"], env=env, cwd=REPO
        )
        engine = make_engine(url)
        first = None
        count = 0
        while count < n:
            await asyncio.sleep(0.05)
            if proc.poll() is not None:
                raise RuntimeError("the audit service exited")
            try:
                async with engine.connect() as conn:
                    count = await conn.scalar(text("SELECT count(*) FROM audit_entries"))
            except Exception:
                continue
            if count and first is None:
                first = (time.perf_counter(), count)
        assert first is not None
        await engine.dispose()
        return (n - first[1]) / (time.perf_counter() - first[0])
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        js = nc.jetstream()
        for config in stream_configs(settings):
            await js.delete_stream(config.name or "")
        await nc.close()
        await _drop(name)


def bench_verify(home: Path, n: int) -> float:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: F401

    from services.audit import bundle, checkpoint
    from services.audit.adapters.keys import parse_key_file
    from services.audit.chain import GENESIS, extend

    keys = parse_key_file((home / "audit.key").read_text())
    signer = load_private_key(home / "audit.ed25519")
    raw = [e.model_dump(exclude_none=True) for e in _events(n, 1)]
    entries = extend("tenant0", 0, GENESIS, raw, keys)
    head = entries[-1]
    path = home / "bundle.jsonl"
    with open(path, "wb") as f:
        f.write(bundle.header_line("tenant0", head.seq, head.hash, "now") + b"\n")
        for e in entries:
            f.write(e.line() + b"\n")
        cp = checkpoint.sign("tenant0", head.seq, head.hash, "now", signer)
        f.write(bundle.checkpoint_line(cp) + b"\n")  # the export checkpoint ends a bundle
    start = time.perf_counter()
    ok, text = verify_file(path, home / "audit.key", [home / "audit.pub"])
    elapsed = time.perf_counter() - start
    assert ok, text
    return n / elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        ensure_keys(home / "audit.key", home / "audit.ed25519", home / "audit.pub")
        rows = [
            (
                "append, store, 1 tenant, batches of 500",
                asyncio.run(bench_store(home, 30_000, 1, 500)),
                TARGET_APPEND,
            ),
            (
                "append, store, 8 tenants, batches of 500",
                asyncio.run(bench_store(home, 30_000, 8, 500)),
                TARGET_APPEND,
            ),
            (
                "append, service draining JetStream (4 tenants)",
                asyncio.run(bench_service(home, 30_000)),
                TARGET_APPEND,
            ),
            ("verify bundle offline (HMAC + Ed25519)", bench_verify(home, 300_000), TARGET_VERIFY),
        ]
    width = max(len(r[0]) for r in rows)
    title = f"audit benchmark (PostgreSQL, {os.cpu_count()} cores)"
    print(f"{title:<{width}}  {'per s':>10}  {'target':>8}")
    for label, rate, target in rows:
        mark = "ok" if rate >= target else "BELOW"
        print(f"{label:<{width}}  {rate:>10,.0f}  {target:>8,}  {mark}")


if __name__ == "__main__":
    main()
