"""Signed adapter bundles: the format lives in libs.adapter_bundle (the inference workers
verify the same bundles); the trainer uses it under this name."""

from __future__ import annotations

from libs.adapter_bundle import (
    CONTENT_FILES,
    MANIFEST,
    SIGNATURE,
    BundleError,
    VerifiedBundle,
    build,
    verify,
)

__all__ = [
    "CONTENT_FILES",
    "MANIFEST",
    "SIGNATURE",
    "BundleError",
    "VerifiedBundle",
    "build",
    "verify",
]
