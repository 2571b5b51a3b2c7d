"""quotas.Headroom: which turns start before their admission's answer (pure)."""

from __future__ import annotations

from services.gateway.quotas import Headroom


def test_a_key_not_yet_answered_waits_for_its_admission() -> None:
    room = Headroom()
    assert not room.start_ahead("acme", "k")


def test_at_most_half_the_last_room_starts_ahead() -> None:
    room = Headroom()
    room.answered("acme", "k", 10, ahead=False)
    started = [room.start_ahead("acme", "k") for _ in range(8)]
    assert started == [True] * 5 + [False] * 3
    room.answered("acme", "k", 8, ahead=True)  # one answered: 4 ahead, room 8 -> full
    assert not room.start_ahead("acme", "k")
    for _ in range(4):
        room.answered("acme", "k", 8, ahead=True)
    assert room.ahead == {}
    assert room.start_ahead("acme", "k")


def test_a_refusal_stops_every_key_of_the_tenant_from_starting_ahead() -> None:
    room = Headroom()
    room.answered("acme", "a", 100, ahead=False)
    room.answered("acme", "b", 100, ahead=False)
    assert room.start_ahead("acme", "a")
    room.answered("acme", "b", 0, ahead=False)  # b refused: the tenant's room may be gone
    assert not room.start_ahead("acme", "a")
    assert not room.start_ahead("acme", "b")
    room.answered("globex", "c", 100, ahead=False)  # another tenant is not concerned
    assert room.start_ahead("globex", "c")
    room.answered("acme", "a", 100, ahead=True)  # the one ahead, admitted after all
    assert room.start_ahead("acme", "a")
