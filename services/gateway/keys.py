"""API keys: their format, how the secret is hashed, and how a presented key is checked.

A key reads `ek_<key_id>_<secret>`. The key id is public (it names the key in logs and
audit records); only SHA-256 over the key id and the secret is stored. The secret has
256 bits of entropy, so a fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "ek"
# The last acts for the tenant its OpenAI-Tenant header names (libs.rbac); `enclave keys
# create` makes such keys, the admin API never does.
ROLES = ("admin", "developer", "auditor", "user", "platform_operator")


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret_hash: str
    plaintext: str  # shown once to whoever created it, never stored


def hash_secret(key_id: str, secret: str) -> str:
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()


def generate() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, hash_secret(key_id, secret), f"{PREFIX}_{key_id}_{secret}")


def parse(presented: str) -> tuple[str, str] | None:
    """Split a presented key into (key_id, secret), or None if it is not one of ours."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def matches(key_id: str, secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(key_id, secret), stored_hash)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
