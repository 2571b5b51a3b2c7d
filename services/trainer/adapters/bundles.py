"""Adapter bundles on disk: one directory per tenant and digest, written once, read whole."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from libs.adapter_bundle import MAX_FILE_BYTES, bundle_path, read_bundle, tenant_dir

__all__ = ["MAX_FILE_BYTES", "BundleDir", "read_bundle", "tenant_dir"]


class BundleDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, tenant: str, digest: str) -> Path:
        return bundle_path(self.root, tenant, digest)

    def delete_tenant(self, tenant: str) -> int:
        """Remove every bundle of the tenant (its erasure); the number removed."""
        folder = self.root / tenant_dir(tenant)
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.iterdir() if p.is_dir())
        shutil.rmtree(folder)
        return count

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
