"""The adapter registry and job records in PostgreSQL and SQLite: versions per tenant and
base model, immutable rows (the migration's triggers), promotion and rollback."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from libs.db.engine import make_engine, migrate_async
from libs.settings import Settings
from services.trainer import jobs
from services.trainer.adapters.sql import TrainerStore, ref
from services.trainer.identity import resolve
from tests.infra import Infra

BASE = "smollm2-135m-instruct"


@pytest.fixture(params=["postgresql", "sqlite"])
async def store(
    request: pytest.FixtureRequest, services: Infra, tmp_path: Path
) -> AsyncIterator[TrainerStore]:
    admin = None
    name = f"enclave_test_{secrets.token_hex(6)}"
    if request.param == "postgresql":
        admin = await asyncpg.connect(services.postgres_admin_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = services.postgres_admin_url.rsplit("/", 1)[0]
        url = base.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'enclave.db'}"
    await migrate_async(Settings(home=tmp_path, database_url=url))
    s = TrainerStore(make_engine(url))
    try:
        yield s
    finally:
        await s.engine.dispose()
        if admin is not None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


async def add(store: TrainerStore, tenant: str, status: str, digest_char: str) -> int:
    version = await store.next_version(tenant, BASE)
    await store.add_adapter(
        tenant=tenant,
        base_model=BASE,
        digest="sha256:" + digest_char * 64,
        job_id=f"ftjob-{version}",
        trained_by="key-1",
        eval_report={"held_out_loss": {"before": 2.0, "after": 1.0}},
        meta={},
        bundle_path=f"/bundles/{digest_char}",
        status=status,
        status_reason="",
        version=version,
    )
    return version


async def test_versions_count_per_tenant_and_promotion_moves(store: TrainerStore) -> None:
    assert await add(store, "acme", "promoted", "1") == 1
    assert await add(store, "acme", "promoted", "2") == 2
    assert await add(store, "other", "promoted", "9") == 1
    rows = await store.adapters("acme", BASE)
    assert [(r.version, r.status) for r in rows] == [(1, "retired"), (2, "promoted")]
    assert rows[0].status_reason == "superseded by v2"
    assert rows[1].public_id == f"acme/{BASE}:ft-v2"
    resolved = resolve(f"acme/{BASE}:ft", "acme", [ref(r) for r in rows])
    assert resolved.digest == "sha256:" + "2" * 64
    # A version number is taken once.
    with pytest.raises(IntegrityError):
        await store.add_adapter(
            tenant="acme",
            base_model=BASE,
            digest="sha256:" + "3" * 64,
            job_id="j",
            trained_by="",
            eval_report={},
            meta={},
            bundle_path="",
            status="ready",
            status_reason="",
            version=2,
        )
    back = await store.rollback("acme", BASE)
    assert back is not None and back.version == 1
    rows = await store.adapters("acme", BASE)
    assert [(r.version, r.status) for r in rows] == [(1, "promoted"), (2, "retired")]
    assert await store.rollback("acme", BASE) is None  # nothing before v1
    assert [r.version for r in await store.adapters("other")] == [1]


async def test_an_adapter_version_is_immutable(store: TrainerStore) -> None:
    await add(store, "acme", "ready", "1")
    for column, value in (("digest", "'sha256:x'"), ("eval_report", "'{}'"), ("version", "7")):
        with pytest.raises(DBAPIError, match="immutable"):
            async with store.engine.begin() as conn:
                await conn.execute(text(f"UPDATE trainer_adapters SET {column} = {value}"))
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE trainer_adapters SET status = 'promoted'"))
    assert [r.status for r in await store.adapters("acme")] == ["promoted"]


async def test_jobs_are_recorded_once_with_events_and_checkpoints(store: TrainerStore) -> None:
    job, created = jobs.new_job(tenant="acme", model=BASE, training_file="file-1", now=1)
    assert await store.create_job(job, created)
    assert not await store.create_job(job, created)  # redelivered: not twice
    queued, ev = jobs.transition(job, "queued", 2)
    await store.save_job(queued, ev)
    cp = jobs.checkpoint(queued, 3, 5, {"train_loss": 1.0}, "x")
    await store.save_job(queued, checkpoint=cp)
    row = await store.job("acme", job.id)
    assert row is not None and row.status == "queued"
    assert [e["message"] for e in row.events][1] == "Files validated, job queued"
    assert row.checkpoints[0]["step_number"] == 5
    assert await store.job("other", job.id) is None  # scoped by tenant
    assert [r.id for r in await store.jobs("acme")] == [job.id]
