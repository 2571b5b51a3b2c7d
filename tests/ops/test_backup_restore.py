"""`enclave backup` / `enclave restore` with the real platform on PostgreSQL: a tenant's audit
chain and vector store, backed up with restic, wiped (database dropped, home deleted) and put
back; the chain still verifies and extends the one exported before, and the tenant's document
still answers a chat with citations."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from services.backup import HOME_ITEMS
from tests.conftest import _platform
from tests.infra import REPO, Infra, Platform

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="needs restic (Debian)")

HANDBOOK = b"""# Orbital handbook

## Security
The badge office is on floor 3 of the Zephyr building; lost badges cost 25 euros.

## Holidays
Each employee has 27 vacation days per year; unused days expire on March 31.
"""
POLICY = b"version: 1\nlevel: tenant\ntenant: vault\n"


def start(plat: Platform) -> None:
    """What a chat with retrieval and its audit trail pass through (no smollm2: the query
    rewrite is off)."""
    plat.launch(["instant"], ["memory", "audit"], ["enclave-instant"])


def stop(plat: Platform) -> None:
    for name in list(plat.procs):
        plat.stop(name)


def rag_chat(plat: Platform, key: str) -> dict[str, Any]:
    r = httpx.post(
        plat.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "enclave-instant",
            "messages": [{"role": "user", "content": "Where is the badge office?"}],
            "rag": {"enabled": True, "collection": "kb"},
        },
        timeout=90,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def export(plat: Platform, out: Path, at_least: int = 1, timeout: float = 60) -> int:
    """The tenant's bundle, once the audit service has appended `at_least` entries."""
    deadline = time.monotonic() + timeout
    while True:
        text = plat.cli("audit", "export", "--tenant", "vault", "--out", str(out))
        count = int(text.split()[1])
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.5)


async def drop_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def cli(plat: Platform, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**plat.env, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_backup_wipe_restore(services: Infra, pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    plat = _platform(
        services,
        home,
        ENCLAVE_DATABASE_URL=pg_url,
        ENCLAVE_MEMORY_REWRITE_QUERY="false",
    )
    repo = tmp_path / "restic-repo"
    try:
        (home / "guardrails" / "tenants").mkdir(parents=True)
        (home / "guardrails" / "tenants" / "vault.yaml").write_bytes(POLICY)
        (home / "admin.key").write_text(plat.admin_key + "\n")  # as `enclave up` keeps it
        start(plat)
        key = plat.create_key("vault", "developer", rpm=100_000)
        client = openai.OpenAI(base_url=plat.base_url + "/v1", api_key=key, max_retries=0)
        f = client.files.create(file=("handbook.md", HANDBOOK), purpose="assistants")
        vs = client.vector_stores.create(name="kb", file_ids=[f.id])
        before = rag_chat(plat, key)["citations"]
        assert before[0]["vector_store_id"] == vs.id and "floor 3" in before[0]["quote"]
        # The key, the file, the store and the chat are in the tenant's chain.
        earlier = tmp_path / "before.jsonl"
        entries = export(plat, earlier, at_least=4)
        assert entries >= 4

        # Refused while the services run: the vectors and their rows must agree.
        refused = cli(plat, "backup", "--repo", str(repo))
        assert refused.returncode == 1 and "still running" in refused.stderr
        stop(plat)
        taken = cli(plat, "backup", "--repo", str(repo))
        assert taken.returncode == 0, taken.stderr
        password = (home / "backup.password").read_text().strip()
        assert (home / "backup.password").stat().st_mode & 0o777 == 0o600
        # Encrypted: neither the handbook nor the policy is readable in the repository.
        stored = b"".join(p.read_bytes() for p in repo.rglob("*") if p.is_file())
        assert b"badge office" not in stored and b"level: tenant" not in stored
        assert cli(plat, "backup", "--list", "--repo", str(repo)).stdout.count("\n") == 1

        # Wipe: the database dropped, the whole home deleted (the password kept elsewhere).
        kept = {name: (home / name).read_bytes() for name in ("audit.key", "admin.key")}
        models = (home / "models.yaml").read_bytes()
        db = pg_url.rsplit("/", 1)[1]
        asyncio.run(drop_database(services.postgres_admin_url, db))
        shutil.rmtree(home)
        home.mkdir()
        (home / "models.yaml").write_bytes(models)

        wrong = cli(plat, "restore", "--repo", str(repo), RESTIC_PASSWORD="not-it")
        assert wrong.returncode == 1 and "wrong password" in wrong.stderr
        assert [p.name for p in home.iterdir()] == ["models.yaml"]
        restored = cli(plat, "restore", "--repo", str(repo), ENCLAVE_BACKUP_PASSWORD=password)
        assert restored.returncode == 0, restored.stderr
        assert "database (postgresql)" in restored.stdout
        for name, data in kept.items():
            assert (home / name).read_bytes() == data
        assert (home / "guardrails" / "tenants" / "vault.yaml").read_bytes() == POLICY
        assert {"qdrant", "audit.key", "audit.ed25519"} <= {p.name for p in home.iterdir()}
        assert set(HOME_ITEMS) >= {p.name for p in home.iterdir()} - {"models.yaml"}

        start(plat)
        # The chain verifies and extends exactly the bundle exported before the backup.
        later = tmp_path / "after.jsonl"
        assert export(plat, later) >= entries
        verify = cli(
            plat,
            "audit",
            "verify",
            str(later),
            "--key-file",
            str(home / "audit.key"),
            "--since",
            str(earlier),
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        # The old key still works, and the document still answers with its citation.
        after = rag_chat(plat, key)["citations"]
        assert after[0]["vector_store_id"] == vs.id and after[0]["file_id"] == f.id
        assert after[0]["chunk_id"] == before[0]["chunk_id"] and "floor 3" in after[0]["quote"]
    finally:
        plat.stop_all()
