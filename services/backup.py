"""`enclave backup` and `enclave restore`: the platform's state in an encrypted restic repository.

What a snapshot holds (and nothing else):
- the database: `pg_dump --format=custom` of `ENCLAVE_DATABASE_URL` (one transaction-consistent
  snapshot), or SQLite's online backup of `<home>/enclave.db`; it holds the audit chains, API
  keys, model routes, files and vector store records, adapter and training job records;
- vectors: the embedded Qdrant shards (`<home>/qdrant`) and mem0's history (`<home>/mem0`);
- adapters: the signed bundles (`<home>/adapters`, or ENCLAVE_TRAINER_BUNDLES_DIR);
- keys: the audit HMAC and Ed25519 keys, the trainer's signing pair, `admin.key`, the adapter
  keys (`<home>/adapter-keys`); key files configured outside the home are carried too;
- policies: `<home>/guardrails` (global.yaml, tenants/...; the packaged ones are code);
- the audit outbox: entries a service recorded that the audit service has not appended yet.

Left out, as they are rebuilt or fetched again: model weights (`models/`), the JetStream and
Redis stores (in-flight events, rate-limit windows, the short conversation buffer), the bus
credentials that `enclave up` generates, traces, metrics targets and logs.

Consistency: the database dump is one snapshot by itself, but the vectors and the database rows
that name them (a file and its chunks) are only consistent with each other when nothing
writes. So `backup` and `restore` refuse while a service of this home runs (each running
process leaves `<home>/metrics/targets/<stage>-<pid>-<port>.json`): stop the platform first
(Ctrl-C on `enclave up`). `--online` takes the backup anyway: the database is still a
snapshot, the files are copied as they lie.

Encryption: restic encrypts every snapshot (AES-256 in counter mode, Poly1305 MAC) with the
repository password: ENCLAVE_BACKUP_PASSWORD or RESTIC_PASSWORD / RESTIC_PASSWORD_FILE when
set, else `<home>/backup.password`, generated 0600 on the first backup. Keep a copy of that
password away from the home: without it no snapshot can be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from libs.metrics import targets_dir
from libs.settings import Settings

# Paths under the home a snapshot carries (those that exist).
HOME_ITEMS = (
    "qdrant",
    "mem0",
    "adapters",
    "adapter-keys",
    "guardrails",
    "audit-outbox",
    "audit.key",
    "audit.ed25519",
    "audit.pub",
    "trainer.ed25519",
    "trainer.pub",
    "admin.key",
)
STAGING = ".backup-staging"  # the dump and the manifest, inside the home while backing up
MANIFEST = "manifest.json"
PASSWORD_FILE = "backup.password"
TAG = "enclave"


class BackupError(Exception):
    pass


@dataclass(frozen=True)
class Repo:
    """Where restic keeps the snapshots, and the environment that opens it."""

    location: str
    env: dict[str, str]

    def restic(self, *args: str, cwd: Path | None = None) -> str:
        out = subprocess.run(
            ["restic", "--repo", self.location, "--no-cache", *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise BackupError(f"restic {args[0]} failed: {out.stderr.strip()[-2000:]}")
        return out.stdout

    def exists(self) -> bool:
        out = subprocess.run(
            ["restic", "--repo", self.location, "--no-cache", "cat", "config"],
            env=self.env,
            capture_output=True,
        )
        return out.returncode == 0


def repository(settings: Settings, location: str | None, create_password: bool) -> Repo:
    if shutil.which("restic") is None:
        raise BackupError("restic is not installed (Debian: apt-get install restic)")
    where = (
        location
        or os.environ.get("ENCLAVE_BACKUP_REPO")
        or os.environ.get("RESTIC_REPOSITORY")
        or str(settings.home.parent / f"{settings.home.name}-backups")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_PASSWORD")}
    if password := os.environ.get("ENCLAVE_BACKUP_PASSWORD") or os.environ.get("RESTIC_PASSWORD"):
        env["RESTIC_PASSWORD"] = password
    elif file := os.environ.get("RESTIC_PASSWORD_FILE"):
        env["RESTIC_PASSWORD_FILE"] = file
    else:
        path = settings.home / PASSWORD_FILE
        if not path.exists():
            if not create_password:
                raise BackupError(
                    f"no repository password: set ENCLAVE_BACKUP_PASSWORD or put it in {path}"
                )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        env["RESTIC_PASSWORD_FILE"] = str(path)
    return Repo(where, env)


def running_stages(settings: Settings) -> list[str]:
    """The services of this home running now: their metrics target files
    (`<stage>-<pid>-<port>.json`, libs/metrics.py) whose process is alive."""
    found = []
    for target in sorted(targets_dir(settings).glob("*.json")):
        parts = target.stem.rsplit("-", 2)
        if len(parts) == 3 and parts[1].isdigit() and Path(f"/proc/{parts[1]}").exists():
            found.append(f"{parts[0]} (pid {parts[1]})")
    return found


def _refuse_while_running(settings: Settings, what: str) -> None:
    if stages := running_stages(settings):
        raise BackupError(
            f"{', '.join(stages)} still running on {settings.home}: stop the platform before "
            f"{what} (backup --online takes one anyway, its files copied as they lie)"
        )


def external_files(settings: Settings) -> dict[str, Path]:
    """Key files and the adapter folder where their settings put them outside the home."""
    from services.audit.config import load_audit_settings
    from services.trainer.config import load_trainer_settings

    audit, trainer = load_audit_settings(settings), load_trainer_settings(settings)
    named = {
        "audit.key": audit.key_file,
        "audit.ed25519": audit.signing_key_file,
        "audit.pub": audit.public_key_file,
        "trainer.ed25519": trainer.signing_key_file,
        "trainer.pub": trainer.public_key_file,
        "adapters": trainer.bundles_dir,
    }
    home = settings.home.resolve()
    return {
        name: path
        for name, path in named.items()
        if path is not None and path.exists() and not path.resolve().is_relative_to(home)
    }


# -- the database -------------------------------------------------------------------------


def _pg(settings: Settings) -> tuple[URL, dict[str, str]] | None:
    """The libpq form of a PostgreSQL database URL (its password in PGPASSWORD, not argv)."""
    if not settings.database_url:
        return None
    url = make_url(settings.database_url)
    if not url.drivername.startswith("postgresql"):
        raise BackupError(f"cannot back up a {url.drivername} database")
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return url.set(drivername="postgresql", password=None, query={}), env


def _libpq(url: URL, database: str | None = None) -> str:
    target = url.set(database=database) if database is not None else url
    return target.render_as_string(hide_password=False)


def _run(cmd: list[str], env: dict[str, str]) -> None:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise BackupError(f"{cmd[0]} failed: {out.stderr.strip()[-2000:]}")


def dump_database(settings: Settings, folder: Path) -> str:
    pg = _pg(settings)
    if pg is None:
        source = settings.home / "enclave.db"
        if not source.exists():
            return "none"
        # SQLite's online backup: a consistent copy even while a service writes.
        with sqlite3.connect(source) as src, sqlite3.connect(folder / "enclave.db") as dst:
            src.backup(dst)
        (folder / "enclave.db").chmod(0o600)
        return "sqlite"
    url, env = pg
    # One REPEATABLE READ transaction: a consistent snapshot while the services write.
    _run(["pg_dump", "--format=custom", "--file", str(folder / "database.dump"), _libpq(url)], env)
    return "postgresql"


def restore_database(settings: Settings, folder: Path, kind: str) -> None:
    if kind == "sqlite":
        target = settings.home / "enclave.db"
        for leftover in (
            target,
            target.with_name("enclave.db-wal"),
            target.with_name("enclave.db-shm"),
        ):
            leftover.unlink(missing_ok=True)
        shutil.copy2(folder / "enclave.db", target)
        return
    if kind != "postgresql":
        return
    pg = _pg(settings)
    if pg is None:
        raise BackupError("the snapshot holds a PostgreSQL dump: set ENCLAVE_DATABASE_URL")
    url, env = pg
    asyncio.run(_create_database(url, env.get("PGPASSWORD")))
    _run(
        [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            "--dbname",
            _libpq(url),
            str(folder / "database.dump"),
        ],
        env,
    )


async def _create_database(url: URL, password: str | None) -> None:
    """The database, created empty where it is missing (a wiped or a new server)."""
    import asyncpg

    name = url.database or "postgres"
    conn = await asyncpg.connect(_libpq(url, "postgres"), password=password)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
    finally:
        await conn.close()


# -- backup and restore -------------------------------------------------------------------


def backup(settings: Settings, location: str | None = None, online: bool = False) -> str:
    """Takes a snapshot; returns its id."""
    if not online:
        _refuse_while_running(settings, "a backup")
    repo = repository(settings, location, create_password=True)
    if not repo.exists():
        repo.restic("init")
    staging = settings.home / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        kind = dump_database(settings, staging)
        external = external_files(settings)
        for name, path in external.items():
            copy = staging / "external" / name
            copy.parent.mkdir(exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, copy)
            else:
                shutil.copy2(path, copy)
        items = [name for name in HOME_ITEMS if (settings.home / name).exists()]
        manifest = {
            "format": 1,
            "database": kind,
            "items": items,
            "external": {name: str(path) for name, path in external.items()},
            "online": online,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        # Relative paths, from the home: the snapshot restores into any home.
        out = repo.restic("backup", "--json", "--tag", TAG, STAGING, *items, cwd=settings.home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for line in out.splitlines():
        if line.startswith("{"):
            message: dict[str, Any] = json.loads(line)
            if message.get("message_type") == "summary":
                return str(message["snapshot_id"])
    raise BackupError(f"restic backup gave no summary: {out[-1000:]}")


def restore(
    settings: Settings, location: str | None = None, snapshot: str = "latest"
) -> dict[str, Any]:
    """Puts a snapshot back: the database, then the home's items (those the snapshot lacks are
    removed, so the home is as it was). Returns the snapshot's manifest."""
    _refuse_while_running(settings, "a restore")
    repo = repository(settings, location, create_password=False)
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".restore-", dir=settings.home))
    try:
        repo.restic("restore", snapshot, "--target", str(scratch))
        staging = scratch / STAGING
        manifest: dict[str, Any] = json.loads((staging / MANIFEST).read_text())
        restore_database(settings, staging, manifest["database"])
        for name in HOME_ITEMS:
            target = settings.home / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if name in manifest["items"]:
                (scratch / name).rename(target)
        for name, original in manifest["external"].items():
            path = Path(original)
            if path.is_dir():
                shutil.rmtree(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            (staging / "external" / name).rename(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest


def snapshots(settings: Settings, location: str | None = None) -> list[dict[str, Any]]:
    repo = repository(settings, location, create_password=False)
    found: list[dict[str, Any]] = json.loads(repo.restic("snapshots", "--json", "--tag", TAG))
    return found


# -- the command line ---------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    p_backup = sub.add_parser(
        "backup", help="snapshot the database, vectors, adapters, keys and policies (restic)"
    )
    p_backup.add_argument("--repo", help="restic repository (default: ENCLAVE_BACKUP_REPO)")
    p_backup.add_argument(
        "--online", action="store_true", help="even while services run (files as they lie)"
    )
    p_backup.add_argument("--list", action="store_true", help="list the snapshots instead")
    p_restore = sub.add_parser("restore", help="put a snapshot back (the platform stopped)")
    p_restore.add_argument("--repo", help="restic repository (default: ENCLAVE_BACKUP_REPO)")
    p_restore.add_argument("--snapshot", default="latest", help="snapshot id (default: latest)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.command == "backup" and args.list:
            for snap in snapshots(settings, args.repo):
                print(snap["short_id"], snap["time"], " ".join(snap.get("paths", [])))
        elif args.command == "backup":
            print(f"snapshot {backup(settings, args.repo, args.online)}")
        else:
            manifest = restore(settings, args.repo, args.snapshot)
            print(
                f"restored {args.snapshot}: database ({manifest['database']}), "
                + ", ".join(manifest["items"])
            )
    except BackupError as exc:
        print(f"enclave {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0
