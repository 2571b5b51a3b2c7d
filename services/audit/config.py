"""Settings of the audit service and its CLI, from ENCLAVE_AUDIT_* environment variables.

Key material comes from files under ENCLAVE_HOME by default (created once, mode 0600),
or from ENCLAVE_AUDIT_HMAC_KEYS="id:hex,id:hex" (the last one signs) where a secret
store injects it; see README.md for KMS / Vault.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.settings import Settings


class AuditSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENCLAVE_AUDIT_", extra="ignore")

    key_file: Path | None = None  # default: <home>/audit.key
    hmac_keys: str = ""  # "id:hex,id:hex": overrides the key file; the last one is active
    signing_key_file: Path | None = None  # default: <home>/audit.ed25519
    public_key_file: Path | None = None  # default: <home>/audit.pub
    checkpoint_interval_s: float = 60.0
    batch_size: int = 500
    batch_timeout_s: float = 0.05
    ack_wait_s: float = 30.0

    def resolved(self, settings: Settings) -> AuditSettings:
        home = settings.home
        return self.model_copy(
            update={
                "key_file": self.key_file or home / "audit.key",
                "signing_key_file": self.signing_key_file or home / "audit.ed25519",
                "public_key_file": self.public_key_file or home / "audit.pub",
            }
        )


def load_audit_settings(settings: Settings) -> AuditSettings:
    return AuditSettings().resolved(settings)
