"""The output window with the real secret scanner: a secret split across tokens never leaves."""

from __future__ import annotations

from libs.events import Delta, GuardrailEntity
from libs.guard_window import HOLD_CHARS, OutputWindow, release_boundary, restore
from services.guardrails.secrets import scan

KEY = "AKIAIOSFODNN7EXAMPLE"


def check(text: str) -> list[GuardrailEntity]:
    """What guardrails.output answers for a window, secrets only."""
    return [
        GuardrailEntity(
            type=s.type,
            start=s.start,
            end=s.end,
            score=s.score,
            action="redact",
            replacement=f"<{s.type}>",
        )
        for s in scan(text)
    ]


def stream(answer: str, size: int, pseudonyms: dict[str, str] | None = None) -> list[str]:
    """Feed `answer` in `size`-character tokens; return what reached the client, in order."""
    window = OutputWindow(pseudonyms)
    sent: list[str] = []
    pieces = [answer[i : i + size] for i in range(0, len(answer), size)]
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        deltas = [Delta(content=piece)] + ([Delta(finish_reason="stop")] if last else [])
        for index in window.add(deltas):
            d = window.release(index, check(window.text(index)), final=False)
            if d is not None:
                sent.append(d.content)
    for index in window.pending():
        d = window.release(index, check(window.text(index)), final=True)
        if d is not None:
            sent.append(d.content)
    return sent


def test_a_secret_split_across_tokens_never_reaches_the_client() -> None:
    filler = "Here is the configuration you asked for, with every value filled in. " * 3
    for size in (1, 2, 3, 5, 7):
        for secret in (
            KEY,
            "password = Tr0ub4dor&3xyz",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlXzEyMw",
        ):
            sent = stream(filler + secret + " and that is all. " + filler, size)
            shown = "".join(sent)
            assert "<" in shown and filler.strip() in shown
            value = secret.split("= ")[-1]
            # No prefix of the secret long enough to matter was ever sent.
            assert not any(value[:k] in shown for k in range(6, len(value) + 1)), (size, secret)


def test_an_unterminated_private_key_is_held_back() -> None:
    text = "key: -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA" + "x" * 200
    cut = release_boundary(text, check(text), final=False)
    assert cut <= text.index("-----BEGIN")


def test_the_delay_is_bounded() -> None:
    words = ("lorem ipsum dolor sit amet " * 40).split(" ")
    window = OutputWindow()
    generated = released = 0
    worst = 0
    for w in words:
        generated += len(w) + 1
        for index in window.add([Delta(content=w + " ")]):
            d = window.release(index, [], final=False)
            if d is not None:
                released += len(d.content)
        worst = max(worst, generated - released)
    assert worst <= HOLD_CHARS + window.stride + 8


def test_pseudonyms_are_restored_even_when_split() -> None:
    sent = stream(
        "Dear <PERSON_1>, we wrote to <EMAIL_ADDRESS_1> today. " * 3,
        2,
        {"<PERSON_1>": "Ada Lovelace", "<EMAIL_ADDRESS_1>": "ada@example.com"},
    )
    shown = "".join(sent)
    assert shown.count("Ada Lovelace") == 3 and shown.count("ada@example.com") == 3
    assert "<" not in shown
    assert restore("<PERSON_9> stays", {"<PERSON_1>": "x"}) == "<PERSON_9> stays"


def test_the_adapter_digest_survives_the_window() -> None:
    """The worker names its adapter on a choice's first delta; the window rebuilds the
    deltas it releases, and the first one released carries the digest on (the stream's
    `system_fingerprint`), once per choice."""
    digest = "sha256:" + "a" * 64
    window = OutputWindow(stride=1)
    ready = window.add(
        [
            Delta(index=0, content="Hello ", adapter_digest=digest),
            Delta(index=1, content="Hi ", adapter_digest=digest),
        ]
    )
    first = [window.release(i, [], final=True) for i in ready]
    assert [d.adapter_digest for d in first if d is not None] == [digest, digest]
    ready = window.add([Delta(index=0, content="world", finish_reason="stop")])
    later = [window.release(i, [], final=True) for i in ready]
    assert [(d.content, d.adapter_digest) for d in later if d is not None] == [("world", None)]
    blocked = window.block(1, "blocked")
    assert blocked.adapter_digest is None  # choice 1 named it already
    fresh = OutputWindow()
    fresh.add([Delta(index=0, content="x", adapter_digest=digest)])
    assert fresh.block(0, "blocked").adapter_digest == digest
