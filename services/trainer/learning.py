"""Learning from feedback, the pure part: a tenant's settings, the retention cutoff, the
training set built from rated turns, and whether a learning job is due. No I/O.

A rated turn is the turn as logged (screened input, the answer as shown with real values
replaced by their placeholders) and its latest rating: an up-rated turn teaches its own
answer, a down-rated one with a correction teaches the correction, a down-rated one
without is left out. The set is OpenAI's chat-format JSONL (libs/training_file.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

ROLES = ("system", "user", "assistant")


class LearningSettings(BaseModel):
    """A tenant's opt-in (off by default) and what its scheduled learning uses."""

    feedback: bool = False  # log turns, take ratings, learn from them
    retention_days: int = Field(default=30, ge=1, le=3650)  # turns and ratings kept
    base_model: str | None = None  # the model the learning job fine-tunes
    eval_set: str | None = None  # the tenant's eval set that gates the new adapter
    min_examples: int = Field(default=8, ge=1, le=100_000)
    # The learning job's hyperparameters (OpenAI's; {} is "auto" for each).
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


def cutoff(now: datetime, retention_days: int) -> datetime:
    """Turns and ratings older than this are past retention."""
    return now - timedelta(days=retention_days)


@dataclass(frozen=True)
class Rated:
    completion_id: str
    messages: Sequence[Mapping[str, Any]]
    answer: str
    rating: Literal["up", "down"]
    correction: str | None = None


def example(turn: Rated) -> dict[str, Any] | None:
    """The chat example a rated turn teaches, or None."""
    if turn.rating == "up":
        target = turn.answer
    elif turn.correction and turn.correction.strip():
        target = turn.correction
    else:
        return None
    messages = [
        {"role": m["role"], "content": m["content"]}
        for m in turn.messages
        if m.get("role") in ROLES and isinstance(m.get("content"), str) and m["content"]
    ]
    if not target.strip() or not any(m["role"] == "user" for m in messages):
        return None
    return {"messages": [*messages, {"role": "assistant", "content": target}]}


def training_set(turns: Iterable[Rated]) -> tuple[str, dict[str, int]]:
    """The JSONL training file and its counts (up, corrected, skipped)."""
    lines: list[str] = []
    counts = {"up": 0, "corrected": 0, "skipped": 0}
    for turn in turns:
        ex = example(turn)
        if ex is None:
            counts["skipped"] += 1
            continue
        counts["up" if turn.rating == "up" else "corrected"] += 1
        lines.append(json.dumps(ex, ensure_ascii=False))
    return "".join(line + "\n" for line in lines), counts


def learning_due(settings: LearningSettings, examples: int, new: int) -> tuple[bool, str]:
    """Whether to submit a learning job now, and why (or why not)."""
    if not settings.feedback:
        return False, "learning from feedback is off for this tenant"
    if not settings.base_model or not settings.eval_set:
        return False, "no base model or eval set configured (the eval gate needs an eval set)"
    if new == 0:
        return False, "no new ratings since the last learning job"
    if examples < settings.min_examples:
        return False, f"{examples} usable rated turns, {settings.min_examples} needed"
    return True, f"{examples} rated turns ({new} new): fine-tune and gate"
