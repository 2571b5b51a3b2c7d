"""Signed adapter bundles: what a trainer hands to a worker, or to an air-gapped site. No I/O.

A bundle is a set of named files:

    adapter.safetensors   the LoRA weights (peft's state dict)
    adapter_config.json   peft's LoraConfig
    eval_report.json      held-out loss before and after, eval results, sample answers
    metadata.json         tenant, base model, version, public id, job, who trained it
    manifest.json         {"v": 1, "digest": <adapter digest>, "files": {name: sha256 hex}}
    signature.json        Ed25519 over the canonical JSON of the manifest (libs.signing)

`verify` refuses a bundle that is unsigned, signed by a key it does not trust, whose
manifest was altered, whose files differ from the manifest (changed, missing or extra),
or whose metadata names another digest. Only then are its files worth loading.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from libs.signing import sign_json, signature_problem
from services.trainer.identity import ADAPTER_FILES, adapter_digest, file_digest

MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
CONTENT_FILES = (*ADAPTER_FILES, "eval_report.json", "metadata.json")


class BundleError(ValueError):
    """A bundle that must not be loaded, and why."""


@dataclass(frozen=True)
class VerifiedBundle:
    digest: str
    manifest: dict[str, Any]
    metadata: dict[str, Any]
    eval_report: dict[str, Any]
    key_id: str


def _json(data: bytes) -> bytes:
    return json.dumps(json.loads(data), indent=2, sort_keys=True).encode() + b"\n"


def build(
    adapter_files: Mapping[str, bytes],
    eval_report: Mapping[str, Any],
    metadata: Mapping[str, Any],
    private_key: Ed25519PrivateKey,
) -> dict[str, bytes]:
    """Every file of the signed bundle; metadata gains the adapter's `digest`."""
    files = {name: adapter_files[name] for name in ADAPTER_FILES}
    digest = adapter_digest({name: file_digest(data) for name, data in files.items()})
    files["eval_report.json"] = _json(json.dumps(dict(eval_report)).encode())
    files["metadata.json"] = _json(json.dumps({**metadata, "digest": digest}).encode())
    manifest = {
        "v": 1,
        "digest": digest,
        "files": {name: file_digest(data) for name, data in sorted(files.items())},
    }
    files[MANIFEST] = _json(json.dumps(manifest).encode())
    files[SIGNATURE] = _json(json.dumps(sign_json(manifest, private_key)).encode())
    return files


def verify(files: Mapping[str, bytes], trusted: Mapping[str, Ed25519PublicKey]) -> VerifiedBundle:
    """The bundle's digest and documents if it is intact and signed by a trusted key."""
    if SIGNATURE not in files:
        raise BundleError("unsigned bundle: no signature.json")
    if MANIFEST not in files:
        raise BundleError("no manifest.json in the bundle")
    try:
        manifest = json.loads(files[MANIFEST])
        signature = json.loads(files[SIGNATURE])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"unreadable manifest or signature: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(signature, dict):
        raise BundleError("manifest and signature must be JSON objects")
    problem = signature_problem(manifest, signature, trusted)
    if problem:
        raise BundleError(problem)
    listed = manifest.get("files")
    if manifest.get("v") != 1 or not isinstance(listed, dict):
        raise BundleError("manifest version or file list is not understood")
    present = set(files) - {MANIFEST, SIGNATURE}
    if set(listed) != present:
        extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
        raise BundleError(f"files differ from the manifest: extra {extra}, missing {missing}")
    for name in sorted(listed):
        if file_digest(files[name]) != listed[name]:
            raise BundleError(f"{name} was altered: its SHA-256 differs from the manifest")
    missing = [n for n in CONTENT_FILES if n not in listed]
    if missing:
        raise BundleError(f"the bundle lacks {', '.join(missing)}")
    digest = adapter_digest({n: listed[n] for n in ADAPTER_FILES})
    if manifest.get("digest") != digest:
        raise BundleError("the manifest's digest is not the digest of the adapter files")
    metadata = json.loads(files["metadata.json"])
    if metadata.get("digest") != digest:
        raise BundleError("metadata.json names another adapter digest")
    return VerifiedBundle(
        digest=digest,
        manifest=manifest,
        metadata=metadata,
        eval_report=json.loads(files["eval_report.json"]),
        key_id=str(signature.get("key_id")),
    )
