"""Audit keys on disk: the HMAC key file and the Ed25519 pair; created once, rotated by append.

HMAC key file (mode 0600), one key per line, the last one signs new entries:
    # comment
    <key_id> <hex secret>
Older lines stay so that entries they signed still verify.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from libs.signing import load_private_key
from services.audit.chain import HmacKeys

HEADER = "# Enclave audit HMAC keys: `<key_id> <hex secret>`; the last line signs new entries.\n"


def _new_key_line() -> tuple[str, str]:
    key_id = f"k{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}"
    return key_id, f"{key_id} {secrets.token_hex(32)}\n"


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Write a new 0600 file; False if it already exists (another process made it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def ensure_keys(key_file: Path, signing_key_file: Path, public_key_file: Path) -> list[Path]:
    """Create whichever key file is missing; returns the ones created."""
    created: list[Path] = []
    _, line = _new_key_line()
    if _create_exclusive(key_file, (HEADER + line).encode()):
        created.append(key_file)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    if _create_exclusive(signing_key_file, pem):
        created.append(signing_key_file)
    if not public_key_file.exists():
        public = load_private_key(signing_key_file).public_key()
        pub_pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        public_key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = public_key_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(pub_pem)
        os.replace(tmp, public_key_file)
        created.append(public_key_file)
    return created


def _keys_from_pairs(pairs: list[list[str]]) -> HmacKeys:
    keys: dict[str, bytes] = {}
    active = ""
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError("an HMAC key is `<key_id> <hex secret>` (file) or `id:hex` (env)")
        key_id, secret = pair[0].strip(), bytes.fromhex(pair[1].strip())
        if len(secret) < 16:
            raise ValueError(f"HMAC key {key_id!r} is shorter than 128 bits")
        keys[key_id] = secret
        active = key_id
    if not keys:
        raise ValueError("no HMAC key found")
    return HmacKeys(keys, active)


def parse_key_file(text: str) -> HmacKeys:
    return _keys_from_pairs(
        [line.split() for line in text.splitlines() if line.strip() and line.strip()[0] != "#"]
    )


def parse_env_keys(value: str) -> HmacKeys:
    return _keys_from_pairs([item.split(":", 1) for item in value.split(",") if item.strip()])


def load_hmac_keys(key_file: Path | None, env_value: str = "") -> HmacKeys:
    if env_value:
        return parse_env_keys(env_value)
    if key_file is None:
        raise ValueError("no HMAC key: set ENCLAVE_AUDIT_HMAC_KEYS or give a key file")
    return parse_key_file(key_file.read_text())


def rotate_hmac_key(key_file: Path) -> str:
    """Append a new key, which signs from now on; the old ones keep verifying."""
    key_id, line = _new_key_line()
    if not key_file.exists():
        _create_exclusive(key_file, HEADER.encode())
    with open(key_file, "a") as f:
        f.write(line)
    os.chmod(key_file, 0o600)
    return key_id


class HmacKeySource:
    """The HMAC keys of a running service, re-read when the key file changes (rotation)."""

    def __init__(self, key_file: Path | None, env_value: str = "") -> None:
        self.key_file = key_file
        self.env_value = env_value
        self._stamp: tuple[int, int] | None = None
        self._keys = load_hmac_keys(key_file, env_value)
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        if self.env_value or self.key_file is None:
            return None
        st = self.key_file.stat()
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> HmacKeys:
        stamp = self._stat()
        if stamp != self._stamp:
            self._keys = load_hmac_keys(self.key_file, self.env_value)
            self._stamp = stamp
        return self._keys
