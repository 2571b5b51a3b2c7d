"""`enclave audit ...`: export a tenant's bundle, verify bundles offline, manage keys.

`verify` needs nothing but the file and a key: no database, no NATS.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from libs.settings import Settings


def add_parser(sub: Any) -> None:
    p = sub.add_parser("audit", help="audit chains: export, verify offline, keys")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    p_export = audit_sub.add_parser("export", help="write a tenant's bundle (JSONL + checkpoints)")
    p_export.add_argument("--tenant", required=True)
    p_export.add_argument("--out", required=True, type=Path)
    p_verify = audit_sub.add_parser("verify", help="verify a bundle offline")
    p_verify.add_argument("file", type=Path)
    p_verify.add_argument("--key-file", type=Path, help="HMAC key file (.enclave/audit.key)")
    p_verify.add_argument(
        "--public-key",
        type=Path,
        action="append",
        default=[],
        help="Ed25519 public key (.enclave/audit.pub); repeat for rotated keys",
    )
    p_verify.add_argument(
        "--since",
        metavar="CHECKPOINT",
        help="a checkpoint seen earlier (a file holding its JSON line, an earlier bundle, "
        "or the JSON itself): the bundle must extend it",
    )
    audit_sub.add_parser("keys", help="create the audit keys where missing")
    audit_sub.add_parser("rotate-key", help="add a new HMAC key; it signs from now on")


def ensure(settings: Settings) -> list[Path]:
    from services.audit.adapters.keys import ensure_keys
    from services.audit.config import load_audit_settings

    cfg = load_audit_settings(settings)
    assert cfg.key_file and cfg.signing_key_file and cfg.public_key_file
    return ensure_keys(cfg.key_file, cfg.signing_key_file, cfg.public_key_file)


def verify_file(
    path: Path, key_file: Path | None, public_keys: list[Path], since: str | None = None
) -> tuple[bool, str]:
    from libs.signing import trusted_keys
    from services.audit.adapters.bundle_file import read_checkpoint, verify_path
    from services.audit.adapters.keys import parse_key_file

    if key_file is None and not public_keys:
        return False, "give --key-file (HMAC) and/or --public-key (Ed25519)"
    if key_file is not None and not public_keys and (key_file.parent / "audit.pub").exists():
        public_keys = [key_file.parent / "audit.pub"]
    keys = parse_key_file(key_file.read_text()) if key_file else None
    pubs = trusted_keys(public_keys) if public_keys else None
    try:
        earlier = read_checkpoint(since) if since else None
    except (OSError, orjson.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        return False, f"FAILED: --since is not a checkpoint ({exc})"
    try:
        report = verify_path(path, keys=keys, public_keys=pubs, since=earlier)
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        return False, f"FAILED: not a readable bundle ({exc})"
    return report.ok, report.summary()


async def _export(settings: Settings, tenant: str, out: Path) -> int:
    from libs.db.engine import make_engine, migrate_async
    from libs.signing import load_private_key
    from services.audit.adapters.keys import HmacKeySource
    from services.audit.adapters.sql import AuditStore
    from services.audit.config import load_audit_settings
    from services.audit.service import AuditService

    cfg = load_audit_settings(settings)
    assert cfg.key_file and cfg.signing_key_file
    await migrate_async(settings)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        service = AuditService(
            AuditStore(engine),
            HmacKeySource(None if cfg.hmac_keys else cfg.key_file, cfg.hmac_keys),
            load_private_key(cfg.signing_key_file),
        )
        tmp = out.with_name(out.name + ".part")
        with open(tmp, "wb") as f:
            count = await service.export(tenant, f.write)
        tmp.replace(out)
    finally:
        await engine.dispose()
    return count


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.audit_command == "verify":
        ok, text = verify_file(args.file, args.key_file, args.public_key, args.since)
        print(text)
        return 0 if ok else 1
    if args.audit_command == "export":
        ensure(settings)
        count = asyncio.run(_export(settings, args.tenant, args.out))
        print(f"exported {count} entries of tenant {args.tenant} to {args.out}")
        return 0
    if args.audit_command == "keys":
        for path in ensure(settings):
            print(f"created {path}")
        return 0
    if args.audit_command == "rotate-key":
        from services.audit.adapters.keys import rotate_hmac_key
        from services.audit.config import load_audit_settings

        cfg = load_audit_settings(settings)
        assert cfg.key_file
        ensure(settings)
        print(f"new HMAC key {rotate_hmac_key(cfg.key_file)} in {cfg.key_file}")
        return 0
    print(f"unknown audit command {args.audit_command}", file=sys.stderr)
    return 2
