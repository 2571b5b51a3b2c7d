"""Settings of the trainer, from ENCLAVE_TRAINER_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.settings import Settings


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENCLAVE_TRAINER_", extra="ignore")

    # Ed25519 pair that signs adapter bundles; workers trust the public key.
    signing_key_file: Path | None = None  # default: <home>/trainer.ed25519
    public_key_file: Path | None = None  # default: <home>/trainer.pub
    bundles_dir: Path | None = None  # default: <home>/adapters
    # Steps an "auto" job aims at (n_epochs = ceil(target / batches per epoch)).
    target_steps: int = 30
    # How long JetStream waits for an ack before redelivering; the trainer marks a job
    # in progress every `progress_s` while it trains, so only a dead trainer loses it.
    ack_wait_s: float = 120.0
    progress_s: float = 20.0
    # torch threads. 1 by default: the trainer shares the cores with the workers, and
    # torch's OpenMP threads spin when the cores are busy (measured on 2 shared cores:
    # 6-9 s a training step with 1 thread, 40-60 s with 2). 0: torch's default (all cores).
    threads: int = 1
    # Daily jobs (the nightly eval run): checked every `schedule_s` (0: never), due from
    # `nightly_hour` UTC, run once a day by one replica.
    schedule_s: float = 300.0
    nightly_hour: int = 2

    def resolved(self, settings: Settings) -> TrainerSettings:
        home = settings.home
        return self.model_copy(
            update={
                "signing_key_file": self.signing_key_file or home / "trainer.ed25519",
                "public_key_file": self.public_key_file or home / "trainer.pub",
                "bundles_dir": self.bundles_dir or home / "adapters",
            }
        )


def load_trainer_settings(settings: Settings) -> TrainerSettings:
    return TrainerSettings().resolved(settings)
