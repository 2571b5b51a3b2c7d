"""Adapter bundles on disk: one directory per tenant and digest, written once, read whole."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_FILE_BYTES = 512 * 1024 * 1024


def tenant_dir(tenant: str) -> str:
    return tenant if _SAFE.match(tenant) else "x" + hashlib.sha256(tenant.encode()).hexdigest()[:24]


class BundleDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, tenant: str, digest: str) -> Path:
        return self.root / tenant_dir(tenant) / digest.removeprefix("sha256:")

    def write(self, tenant: str, digest: str, files: Mapping[str, bytes]) -> Path:
        """Write the bundle atomically (a temporary directory renamed into place)."""
        target = self.path(tenant, digest)
        if target.exists():
            shutil.rmtree(target)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"bad file name in a bundle: {name!r}")
            (tmp / name).write_bytes(data)
        os.replace(tmp, target)
        return target


def read_bundle(path: Path) -> dict[str, bytes]:
    """Every plain file of a bundle directory (verification decides what they are worth)."""
    files: dict[str, bytes] = {}
    for p in sorted(path.iterdir()):
        if not p.is_file() or p.is_symlink():
            raise ValueError(f"{p.name} in a bundle is not a plain file")
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{p.name} is larger than {MAX_FILE_BYTES} bytes")
        files[p.name] = p.read_bytes()
    return files
