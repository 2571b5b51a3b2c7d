"""The trainer's daily jobs and when they are due. No I/O, no sleeping: the clock comes in.

A daily job is due on a UTC day from its hour on, once: `due` names the (job, day) pairs
to run now, given the ones already done. The trainer ticks every few minutes
(`ENCLAVE_TRAINER_SCHEDULE_S`); each due pair is then claimed in SQL (the first replica
wins, `TrainerStore.claim`) and run, so a job runs once a day whatever the replicas.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Daily:
    name: str
    hour: int  # UTC hour from which the day's run is due (0-23)


def day_of(now: datetime) -> str:
    return now.astimezone(UTC).date().isoformat()


def due(jobs: Iterable[Daily], now: datetime, done: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (job, day) pairs to run at `now`: the job's hour has come today and today's run
    is not in `done`."""
    now = now.astimezone(UTC)
    day = day_of(now)
    return [(j.name, day) for j in jobs if now.hour >= j.hour and (j.name, day) not in done]
