"""Signed checkpoints: "tenant T's chain had N entries ending in hash H at time t". No I/O.

The signature is Ed25519 over the canonical JSON (RFC 8785) of
`{"v": 1, "tenant", "count", "head_hash", "time", "key_id"}`, base64 in the bundle.
HMAC convinces only whoever holds the HMAC key (who could also rebuild the chain);
a checkpoint convinces anyone holding the public key, and one covering the last entry
makes truncation detectable.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from libs.signing import key_id as public_key_id
from services.audit.chain import canonical


@dataclass(frozen=True)
class Checkpoint:
    tenant: str
    count: int
    head_hash: str
    time: str
    key_id: str
    signature: str  # base64

    def body(self) -> dict[str, Any]:
        return {
            "v": 1,
            "tenant": self.tenant,
            "count": self.count,
            "head_hash": self.head_hash,
            "time": self.time,
            "key_id": self.key_id,
        }

    def as_line(self) -> dict[str, Any]:
        return {"type": "checkpoint", **self.body(), "signature": self.signature}

    @classmethod
    def from_line(cls, obj: Mapping[str, Any]) -> Checkpoint:
        return cls(
            tenant=str(obj["tenant"]),
            count=int(obj["count"]),
            head_hash=str(obj["head_hash"]),
            time=str(obj["time"]),
            key_id=str(obj["key_id"]),
            signature=str(obj["signature"]),
        )


def sign(
    tenant: str, count: int, head_hash: str, time: str, private_key: Ed25519PrivateKey
) -> Checkpoint:
    key_id = public_key_id(private_key.public_key())
    unsigned = Checkpoint(tenant, count, head_hash, time, key_id, "")
    signature = private_key.sign(canonical(unsigned.body()))
    return Checkpoint(tenant, count, head_hash, time, key_id, base64.b64encode(signature).decode())


def signature_problem(cp: Checkpoint, public_keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """None when a key we trust signed the checkpoint; else why not."""
    key = public_keys.get(cp.key_id)
    if key is None:
        return f"signed by unknown key {cp.key_id!r}"
    try:
        key.verify(base64.b64decode(cp.signature, validate=True), canonical(cp.body()))
    except (InvalidSignature, ValueError):
        return "bad signature (the checkpoint was altered or forged)"
    return None


def expected_heads(
    checkpoints: Iterable[Checkpoint],
    tenant: str | None,
    public_keys: Mapping[str, Ed25519PublicKey] | None,
) -> tuple[dict[int, str], str | None]:
    """Head hash by count from checkpoints whose signature holds, or the first problem.

    Without public keys the signatures go unchecked: the heads still catch an honest
    but truncated copy, not a forger (say so to the user).
    """
    heads: dict[int, str] = {}
    for cp in sorted(checkpoints, key=lambda c: c.count):
        if tenant is not None and cp.tenant != tenant:
            return heads, f"checkpoint at count {cp.count} is for tenant {cp.tenant!r}"
        if public_keys is not None:
            problem = signature_problem(cp, public_keys)
            if problem:
                return heads, f"checkpoint at count {cp.count}: {problem}"
        if heads.get(cp.count, cp.head_hash) != cp.head_hash:
            return heads, f"two checkpoints at count {cp.count} disagree on the head hash"
        if cp.count > 0:
            heads[cp.count] = cp.head_hash
    return heads, None
