"""The runtime's book of running turns: a client's cancel and a response's cancel."""

from __future__ import annotations

import asyncio

from services.agent_runtime.running import RunningTurns


async def test_a_response_cancel_finds_its_turn_by_request_id_and_is_told_apart() -> None:
    turns = RunningTurns()
    chat: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    response: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    turns.add("reply.a", "req-a", chat)
    turns.add("reply.b", "req-b", response)
    assert len(turns) == 2

    assert turns.cancel_response("req-b") and response.cancelled() and not chat.cancelled()
    assert turns.response_cancelled("reply.b") and not turns.response_cancelled("reply.a")
    assert turns.cancel("reply.a") and chat.cancelled()
    assert not turns.response_cancelled("reply.a")  # the client went: not a response cancel

    turns.remove("reply.a")
    turns.remove("reply.b")
    assert not turns
    assert not turns.cancel("reply.a") and not turns.cancel_response("req-b")
    assert not turns.response_cancelled("reply.b")


async def test_a_cancel_that_comes_before_its_turn_stops_it_as_it_starts() -> None:
    """A turn started ahead of its admission and refused is cancelled about one round trip
    after its publish, possibly before it starts here: the cancel is remembered."""
    now = [100.0]
    turns = RunningTurns(remember_s=10.0, clock=lambda: now[0], limit=2)
    loop = asyncio.get_running_loop()
    assert not turns.cancel("reply.early")  # not running here (yet)
    early: asyncio.Future[None] = loop.create_future()
    turns.add("reply.early", "req-e", early)
    assert early.cancelled()
    other: asyncio.Future[None] = loop.create_future()
    turns.add("reply.other", "req-o", other)
    assert not other.cancelled()  # remembered cancels stop only the turns they name
    # Forgotten after remember_s, and beyond `limit` the oldest first.
    turns.cancel("reply.late")
    now[0] += 11
    late: asyncio.Future[None] = loop.create_future()
    turns.add("reply.late", "req-l", late)
    assert not late.cancelled()
    for subject in ("reply.1", "reply.2", "reply.3"):
        turns.cancel(subject)
    first: asyncio.Future[None] = loop.create_future()
    third: asyncio.Future[None] = loop.create_future()
    turns.add("reply.1", "req-1", first)
    turns.add("reply.3", "req-3", third)
    assert not first.cancelled() and third.cancelled()
