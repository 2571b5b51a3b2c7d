"""The turns running on this replica, by reply subject and by request id: what a client's
`chat.cancel` and a background response's `responses.cancel` stop. Pure bookkeeping.

A `chat.cancel` can come before its turn starts anywhere: the gateway publishes a turn
ahead of its admission and cancels it when the limits refuse it, about one round trip
later, while the turn may still wait for a slot here. Such a cancel is remembered (for
`remember_s`, at most `limit` of them, the oldest forgotten first), and a turn it names is
cancelled as it starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Turn:
    work: asyncio.Future[Any]
    request_id: str
    response_cancelled: bool = False


class RunningTurns:
    def __init__(
        self,
        remember_s: float = 90.0,
        clock: Callable[[], float] = time.monotonic,
        limit: int = 10_000,
    ) -> None:
        self._by_subject: dict[str, _Turn] = {}
        self._subjects: dict[str, str] = {}  # request id -> reply subject
        self.remember_s = remember_s
        self.clock = clock
        self.limit = limit
        # reply subject -> until when: cancels of turns not (yet) running here, oldest first
        self._early: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._by_subject)

    def add(self, reply_subject: str, request_id: str, work: asyncio.Future[Any]) -> None:
        self._by_subject[reply_subject] = _Turn(work, request_id)
        self._subjects[request_id] = reply_subject
        until = self._early.pop(reply_subject, None)
        if until is not None and until > self.clock():
            work.cancel()  # its client was gone (or refused) before it started here

    def remove(self, reply_subject: str) -> None:
        turn = self._by_subject.pop(reply_subject, None)
        if turn is not None and self._subjects.get(turn.request_id) == reply_subject:
            del self._subjects[turn.request_id]

    def cancel(self, reply_subject: str) -> bool:
        """The client went away (`chat.cancel`): True when the turn runs here."""
        turn = self._by_subject.get(reply_subject)
        if turn is None:
            self._remember(reply_subject)
            return False
        turn.work.cancel()
        return True

    def _remember(self, reply_subject: str) -> None:
        now = self.clock()
        early = self._early
        while early:
            oldest = next(iter(early))
            if early[oldest] > now and len(early) < self.limit:
                break
            del early[oldest]
        early[reply_subject] = now + self.remember_s

    def cancel_response(self, request_id: str) -> bool:
        """Its background response was cancelled: True when the turn runs here."""
        turn = self._by_subject.get(self._subjects.get(request_id, ""))
        if turn is None:
            return False
        turn.response_cancelled = True
        turn.work.cancel()
        return True

    def response_cancelled(self, reply_subject: str) -> bool:
        turn = self._by_subject.get(reply_subject)
        return turn is not None and turn.response_cancelled
