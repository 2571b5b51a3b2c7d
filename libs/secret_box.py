"""Secrets at rest (external providers' API keys): encrypted with a key under ENCLAVE_HOME.

Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`). The key file is
`<home>/keys/secrets.fernet`, created 0600 in a 0700 folder on first use; a key file that
others may read is refused, not used. What is stored is the token (`enc:v1:...`), never
the secret; the SQL row or config file that holds it is useless without the key file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

PREFIX = "enc:v1:"


def key_path(home: Path) -> Path:
    return home / "keys" / "secrets.fernet"


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self.fernet = Fernet(key)

    @classmethod
    def at(cls, home: Path) -> SecretBox:
        """The box of this home, its key made (0600) on first use."""
        path = key_path(home)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise PermissionError(
                    f"{path} is readable by others (mode {mode:o}); it must be 0600"
                ) from None
            return cls(path.read_bytes().strip())
        key = Fernet.generate_key()
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        return cls(key)

    def seal(self, secret: str) -> str:
        return PREFIX + self.fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        if not sealed.startswith(PREFIX):
            raise ValueError("not a sealed secret (enc:v1:...)")
        try:
            return self.fernet.decrypt(sealed[len(PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise ValueError("the secret was sealed with another key, or altered") from exc
