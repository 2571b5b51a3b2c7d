"""Ed25519 signing keys and detached signatures over canonical JSON, for any service.

A key pair lives in two PEM files: the private key (PKCS#8, mode 0600, created once and
never overwritten) and its public key (SubjectPublicKeyInfo), which verifiers are handed.
A key is named by its id, `ed25519:` + the first 16 hex digits of SHA-256 of the raw
public key, so a verifier holding several public keys (rotated over the years) knows
which one to try. What is signed is RFC 8785 canonical JSON (`canonical_json`).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value."""
    return rfc8785.dumps(obj)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def ensure_key_pair(private_file: Path, public_file: Path) -> bool:
    """Create the pair if the private key file is missing; True if this call created it.

    The private file is created exclusively (O_EXCL), so two processes starting at once
    end up with one key; the public file is (re)written from whichever private key won.
    """
    created = False
    private_file.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    try:
        fd = os.open(private_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        created = True
    if created or not public_file.exists():
        public = load_private_key(private_file).public_key()
        public_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = public_file.with_name(f"{public_file.name}.tmp{os.getpid()}")
        tmp.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
        os.replace(tmp, public_file)
    return created


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key file, or the public half of a private key file."""
    data = path.read_bytes()
    key: object = (
        load_private_key(path).public_key() if b"PRIVATE KEY" in data else load_pem_public_key(data)
    )
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def trusted_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id."""
    keys = [load_public_key(p) for p in paths]
    return {key_id(k): k for k in keys}


def sign_json(obj: Any, private_key: Ed25519PrivateKey) -> dict[str, str]:
    """A detached signature of `obj`'s canonical JSON: {"key_id", "signature" (base64)}."""
    signature = private_key.sign(canonical_json(obj))
    return {
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(signature).decode(),
    }


def signature_problem(
    obj: Any, signature: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]
) -> str | None:
    """None when a trusted key signed `obj` exactly; else why not."""
    kid = signature.get("key_id")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        return f"signed by an untrusted or unknown key {kid!r}"
    try:
        raw = base64.b64decode(str(signature.get("signature", "")), validate=True)
        key.verify(raw, canonical_json(obj))
    except (InvalidSignature, ValueError):
        return "bad signature: the signed content was altered or the signature forged"
    return None
