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
