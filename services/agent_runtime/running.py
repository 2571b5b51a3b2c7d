"""The turns running on this replica, by reply subject and by request id: what a client's
`chat.cancel` and a background response's `responses.cancel` stop. Pure bookkeeping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


@dataclass
class _Turn:
    work: asyncio.Future[Any]
    request_id: str
    response_cancelled: bool = False


class RunningTurns:
    def __init__(self) -> None:
        self._by_subject: dict[str, _Turn] = {}
        self._subjects: dict[str, str] = {}  # request id -> reply subject

    def __len__(self) -> int:
        return len(self._by_subject)

    def add(self, reply_subject: str, request_id: str, work: asyncio.Future[Any]) -> None:
        self._by_subject[reply_subject] = _Turn(work, request_id)
        self._subjects[request_id] = reply_subject

    def remove(self, reply_subject: str) -> None:
        turn = self._by_subject.pop(reply_subject, None)
        if turn is not None and self._subjects.get(turn.request_id) == reply_subject:
            del self._subjects[turn.request_id]

    def cancel(self, reply_subject: str) -> bool:
        """The client went away (`chat.cancel`): True when the turn runs here."""
        turn = self._by_subject.get(reply_subject)
        if turn is None:
            return False
        turn.work.cancel()
        return True

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
