"""The end of an admitted turn: its usage settles its reservation (services/gateway/quotas.py).

`MeteredTurn` stands in for the `TurnStream` that `collect` and `stream` read: it passes
every batch through, remembers the latest usage the turn reported, and on `close` (the
answer sent, an error, the client gone) settles the reservation from that usage: unused
tokens go back to the buckets and the budget, the tenant's in-flight place is freed, and
the day's usage of the key and model is counted. Settled exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from libs.events import TurnEvent
from services.gateway.turn_client import TurnStream

log = logging.getLogger("enclave.gateway")

Settle = Callable[[int], Awaitable[None]]  # tokens used -> settled


class MeteredTurn(TurnStream):
    def __init__(self, turn: TurnStream, first: list[TurnEvent], settle: Settle) -> None:
        # Not TurnStream.__init__: this one reads through `turn`, it owns no inbox.
        self.turn = turn
        self.served_by = turn.served_by
        self.used = 0
        self._settle: Settle | None = settle
        self._see(first)

    def _see(self, batch: list[TurnEvent]) -> None:
        for ev in batch:
            if ev.usage is not None:
                self.used = ev.usage.total_tokens

    async def next_batch(self) -> list[TurnEvent]:
        batch = await self.turn.next_batch()
        self.served_by = self.turn.served_by  # a turn started again is served anew
        self._see(batch)
        return batch

    async def close(self) -> None:
        try:
            await self.turn.close()
        finally:
            await settle_once(self)


async def settle_once(turn: MeteredTurn) -> None:
    settle, turn._settle = turn._settle, None
    if settle is None:
        return
    try:
        await settle(turn.used)
    except Exception:  # the answer went out; a lost settlement only keeps the reservation
        log.exception("settling a reservation failed")
