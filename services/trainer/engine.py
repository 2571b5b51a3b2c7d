"""The training engine's port: what a job asks of it and what it gives back. No torch here,
so the service starts without loading torch (adapters/peft_engine.py is the engine)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.trainer.training_file import Example

StepCallback = Callable[[int, int, float], None]  # step, total steps, train loss


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass
class TrainResult:
    adapter_files: dict[str, bytes]
    loss_before: float | None
    loss_after: float | None
    steps: int
    trained_tokens: int
    train_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


class Engine(Protocol):
    def train(
        self,
        train: Sequence[Example],
        held_out: Sequence[Example],
        cfg: TrainSettings,
        *,
        on_step: StepCallback | None = None,
        cancelled: threading.Event | None = None,
    ) -> TrainResult: ...

    def generate(
        self,
        prompts: Sequence[Sequence[Mapping[str, str]]],
        adapter_files: Mapping[str, bytes] | None = None,
        *,
        max_new_tokens: int = 48,
        seed: int = 0,
    ) -> list[str]: ...
