"""`enclave adapters ...`: list a tenant's adapter versions, roll back, and move signed
bundles into and out of a site (an air-gapped one included) as tar files.

`export` writes the verified bundle's files into a tar. `import` refuses anything that
does not verify against the public keys given (and this site's own), registers the
adapter as the tenant's next version (status `ready`: an import is never promoted by
itself) and keeps the signer's public key in `<home>/adapter-keys/`, the keys this
site trusts for adapters besides its own trainer's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from libs.settings import Settings

MAX_TAR_BYTES = 1024 * 1024 * 1024


def add_parser(sub: Any) -> None:
    p = sub.add_parser("adapters", help="fine-tuned adapters: list, export, import, rollback")
    a = p.add_subparsers(dest="adapters_command", required=True)
    p_list = a.add_parser("list", help="a tenant's adapter versions")
    p_list.add_argument("--tenant", required=True)
    p_list.add_argument("--base-model")
    p_export = a.add_parser("export", help="write a version's signed bundle as a tar file")
    p_export.add_argument("--tenant", required=True)
    p_export.add_argument("--model", required=True, help="tenant/base:ft-vN or tenant/base:ft")
    p_export.add_argument("--out", required=True, type=Path)
    p_import = a.add_parser("import", help="verify a bundle tar and register it")
    p_import.add_argument("file", type=Path)
    p_import.add_argument(
        "--public-key",
        type=Path,
        action="append",
        default=[],
        help="Ed25519 public key of the signing site (its trainer.pub); repeat for several",
    )
    p_roll = a.add_parser("rollback", help="serve the previously promoted version again")
    p_roll.add_argument("--tenant", required=True)
    p_roll.add_argument("--base-model", required=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))


def trust_dir(settings: Settings) -> Path:
    return settings.home / "adapter-keys"


def site_keys(settings: Settings, extra: list[Path]) -> dict[str, Any]:
    """This site's trainer key, the keys imported before, and `extra`."""
    from libs.signing import trusted_keys
    from services.trainer.config import load_trainer_settings

    cfg = load_trainer_settings(settings)
    paths = [p for p in [cfg.public_key_file] if p is not None and p.exists()]
    if trust_dir(settings).exists():
        paths += sorted(trust_dir(settings).glob("*.pub"))
    return trusted_keys([*paths, *extra])


def read_tar(path: Path) -> dict[str, bytes]:
    """The plain files at the top of a bundle tar; anything else is refused."""
    files: dict[str, bytes] = {}
    total = 0
    with tarfile.open(path, "r") as tar:
        for member in tar.getmembers():
            if not member.isfile() or "/" in member.name or member.name.startswith("."):
                raise ValueError(f"{member.name!r} is not a plain top-level file of a bundle")
            total += member.size
            if total > MAX_TAR_BYTES:
                raise ValueError("the bundle is too large")
            data = tar.extractfile(member)
            assert data is not None
            files[member.name] = data.read()
    return files


def write_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from libs.db.engine import make_engine, migrate_async
    from services.trainer import bundle
    from services.trainer.adapters.bundles import BundleDir, read_bundle
    from services.trainer.adapters.sql import TrainerStore, adapter_public, ref
    from services.trainer.config import load_trainer_settings
    from services.trainer.identity import NotFound, resolve

    await migrate_async(settings)
    store = TrainerStore(make_engine(settings.sqlalchemy_url))
    try:
        cmd = args.adapters_command
        if cmd == "list":
            for row in await store.adapters(args.tenant, args.base_model):
                loss = (row.eval_report.get("held_out_loss") or {}) if row.eval_report else {}
                print(
                    f"{row.public_id}  {row.status:<8}  {row.digest}  "
                    f"loss {loss.get('before')} -> {loss.get('after')}  {row.status_reason}"
                )
            return 0
        if cmd == "rollback":
            current = await store.promoted(args.tenant, args.base_model)
            back = await store.rollback(args.tenant, args.base_model)
            if back is None:
                print("no earlier promoted version to roll back to")
                return 1
            print(f"{back.public_id} ({back.digest}) serves again")
            if not await announce_rollback(settings, back, current.digest if current else None):
                print("NATS not reachable: routes cached elsewhere end when they expire")
            return 0
        if cmd == "export":
            rows = await store.adapters(args.tenant)
            try:
                found = resolve(args.model, args.tenant, [ref(r) for r in rows])
            except NotFound as exc:
                print(exc)
                return 1
            row = next(r for r in rows if r.version == found.version and r.digest == found.digest)
            files = read_bundle(Path(row.bundle_path))
            verified = bundle.verify(files, site_keys(settings, []))
            write_tar(args.out, files)
            print(
                f"wrote {args.out}: {row.public_id} {verified.digest}, signed by {verified.key_id}"
            )
            return 0
        if cmd == "import":
            files = read_tar(args.file)
            try:
                verified = bundle.verify(files, site_keys(settings, args.public_key))
            except bundle.BundleError as exc:
                print(f"refused: {exc}")
                return 1
            meta = verified.metadata
            tenant, base = str(meta["tenant"]), str(meta["base_model"])
            cfg = load_trainer_settings(settings)
            assert cfg.bundles_dir is not None
            path = BundleDir(cfg.bundles_dir).write(tenant, verified.digest, files)
            row = await store.add_adapter(
                tenant=tenant,
                base_model=base,
                digest=verified.digest,
                job_id=str(meta.get("job_id", "")),
                trained_by=str(meta.get("trained_by", "")),
                eval_report=verified.eval_report,
                meta={**meta, "imported_from": meta.get("public_id"), "key_id": verified.key_id},
                bundle_path=str(path),
                status="ready",
                status_reason=f"imported, signed by {verified.key_id}",
                version=await store.next_version(tenant, base),
            )
            trust_dir(settings).mkdir(parents=True, exist_ok=True)
            for key in args.public_key:
                shutil.copyfile(key, trust_dir(settings) / f"{key.stem}-{_short(key)}.pub")
            print(json.dumps({k: v for k, v in adapter_public(row).items() if k != "eval_report"}))
            return 0
        raise SystemExit(f"unknown adapters command {cmd!r}")
    finally:
        await store.engine.dispose()


async def announce_rollback(settings: Settings, back: Any, previous: str | None) -> bool:
    """`models.changed` (rolled_back): routers, runtimes and workers drop their routes."""
    import nats

    from libs.bus import event_bytes
    from libs.events import ModelsChanged
    from services.trainer.identity import public_id

    event = ModelsChanged(
        kind="rolled_back",
        tenant=back.tenant,
        base_model=back.base_model,
        public_id=public_id(back.tenant, back.base_model, None),
        digest=back.digest,
        previous=previous,
    )
    try:
        nc = await nats.connect(
            settings.nats_url, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0
        )
    except Exception:
        return False
    try:
        await nc.publish(settings.subjects.models_changed, event_bytes(event))
        await nc.flush(timeout=3)
        return True
    except Exception:
        return False
    finally:
        await nc.close()


def _short(path: Path) -> str:
    from libs.signing import key_id, load_public_key

    return key_id(load_public_key(path)).split(":", 1)[1]
