"""quotas.Headroom: which turns start before their admission's answer (pure)."""

from __future__ import annotations

from services.gateway.quotas import Headroom


def test_a_key_not_yet_answered_waits_for_its_admission() -> None:
    room = Headroom()
    assert not room.start_ahead("acme", "k", 10)


def test_at_most_half_the_last_room_starts_ahead() -> None:
    room = Headroom()
    room.answered("acme", "k", 10, 100, ahead=False)
    started = [room.start_ahead("acme", "k", 100) for _ in range(8)]
    assert started == [True] * 5 + [False] * 3
    room.answered("acme", "k", 8, 100, ahead=True)  # one answered: 4 ahead, room 8 -> full
    assert not room.start_ahead("acme", "k", 100)
    for _ in range(4):
        room.answered("acme", "k", 8, 100, ahead=True)
    assert room.ahead == {}
    assert room.start_ahead("acme", "k", 100)


def test_room_counted_in_small_requests_does_not_start_a_larger_one() -> None:
    """The room is in requests of the answered size: a tiny embedding's room of 5000 says
    nothing about an 8000-token chat."""
    room = Headroom()
    room.answered("acme", "k", 5000, 10, ahead=False)
    assert not room.start_ahead("acme", "k", 8000)
    assert room.start_ahead("acme", "k", 10)


def test_a_refusal_stops_every_key_of_the_tenant_from_starting_ahead() -> None:
    room = Headroom()
    room.answered("acme", "a", 100, 50, ahead=False)
    room.answered("acme", "b", 100, 50, ahead=False)
    assert room.start_ahead("acme", "a", 50)
    room.answered("acme", "b", 0, 50, ahead=False)  # b refused: the tenant's room may be gone
    assert not room.start_ahead("acme", "a", 50)
    assert not room.start_ahead("acme", "b", 50)
    room.answered("globex", "c", 100, 50, ahead=False)  # another tenant is not concerned
    assert room.start_ahead("globex", "c", 50)
    room.answered("acme", "a", 100, 50, ahead=True)  # the one ahead, admitted after all
    assert room.start_ahead("acme", "a", 50)
