"""Adapter bundles as a worker reads them: `<home>/adapters/<tenant>/<hex>/`, verified first.

A worker trusts the trainer's key (`<home>/trainer.pub`) and the keys `enclave adapters
import` keeps (`<home>/adapter-keys/*.pub`). A bundle is handed out only when its
signature, manifest and files verify (libs.adapter_bundle.verify) and its metadata names
the asked tenant, digest and this worker's base model; otherwise AdapterRefused says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from libs.adapter_bundle import BundleError, bundle_path, read_bundle, verify
from libs.signing import trusted_keys
from services.inference_router.adapter_choice import AdapterKey, AdapterRefused, bundle_problem


def site_trusted_keys(home: Path) -> dict[str, Ed25519PublicKey]:
    """The adapter signing keys this site trusts (none yet: every bundle is refused)."""
    paths = [home / "trainer.pub"] if (home / "trainer.pub").exists() else []
    keys_dir = home / "adapter-keys"
    if keys_dir.is_dir():
        paths += sorted(keys_dir.glob("*.pub"))
    return trusted_keys(paths)


class AdapterStore:
    def __init__(
        self, root: Path, trusted: Mapping[str, Ed25519PublicKey], base_model: str
    ) -> None:
        self.root = root
        self.trusted = trusted
        self.base_model = base_model

    def verified_files(self, key: AdapterKey) -> dict[str, bytes]:
        """The bundle's files, only if it verifies and is the key's adapter for this model."""
        path = bundle_path(self.root, key.tenant, key.digest)
        if not path.is_dir():
            raise AdapterRefused(f"adapter {key.digest} is not on this worker (no bundle)")
        try:
            files = read_bundle(path)
            verified = verify(files, self.trusted)
        except (BundleError, ValueError, OSError) as exc:
            raise AdapterRefused(
                f"adapter {key.digest} cannot be verified: {exc}",
                status=403,
                code="adapter_unverified",
            ) from exc
        problem = bundle_problem(key, self.base_model, verified.metadata)
        if problem:
            raise AdapterRefused(problem, status=403, code="adapter_unverified")
        return files
