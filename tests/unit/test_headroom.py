"""quotas.Headroom: which turns start before their admission's answer (pure)."""

from __future__ import annotations

from services.gateway.quotas import Headroom


def test_a_key_not_yet_answered_waits_for_its_admission() -> None:
    room = Headroom()
    assert not room.start_ahead("acme", "k", 10)


def test_at_most_half_the_last_room_starts_ahead() -> None:
    room = Headroom()
    room.answered("acme", "k", 10, 100, ahead=0)
    started = [room.start_ahead("acme", "k", 100) for _ in range(8)]
    assert started == [1] * 5 + [0] * 3
    room.answered("acme", "k", 8, 100, ahead=1)  # one answered: 4 ahead, room 8 -> full
    assert not room.start_ahead("acme", "k", 100)
    for _ in range(4):
        room.answered("acme", "k", 8, 100, ahead=1)
    assert room.ahead == {}
    assert room.start_ahead("acme", "k", 100)


def test_a_larger_request_takes_as_much_room_as_its_size() -> None:
    """The room is in requests of the answered size: an 8000-token chat after a 10-token
    embedding's room of 5000 (50,000 tokens) takes 800 of it."""
    room = Headroom()
    room.answered("acme", "k", 5000, 10, ahead=0)
    assert [room.start_ahead("acme", "k", 8000) for _ in range(4)] == [800, 800, 800, 0]
    room.answered("acme", "k", 4000, 10, ahead=800)
    assert room.ahead == {("acme", "k"): 1600, ("acme", ""): 1600}
    assert room.start_ahead("acme", "k", 5) == 1  # a smaller one takes one


def test_a_refusal_stops_every_key_of_the_tenant_from_starting_ahead() -> None:
    room = Headroom()
    room.answered("acme", "a", 100, 50, ahead=0)
    room.answered("acme", "b", 100, 50, ahead=0)
    assert room.start_ahead("acme", "a", 50)
    room.answered("acme", "b", 0, 50, ahead=0)  # b refused: the tenant's room may be gone
    assert not room.start_ahead("acme", "a", 50)
    assert not room.start_ahead("acme", "b", 50)
    room.answered("globex", "c", 100, 50, ahead=0)  # another tenant is not concerned
    assert room.start_ahead("globex", "c", 50)
    room.answered("acme", "a", 100, 50, ahead=1)  # the one ahead, admitted after all
    assert room.start_ahead("acme", "a", 50)
