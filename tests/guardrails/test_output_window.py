"""The output window with the real secret scanner and the real output check: a secret or a
PII value split across tokens never leaves, and the first words leave at once."""

from __future__ import annotations

import json
from collections.abc import Callable

from libs.context import RequestContext
from libs.events import ChatMessage, Delta, GuardrailCheck, GuardrailEntity
from libs.guard_window import (
    HOLD_CHARS,
    OutputWindow,
    apply_spans,
    everyday,
    held_from,
    release_boundary,
    restore,
)
from services.guardrails.policy import EffectivePolicy
from services.guardrails.screen import Screener
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


# -- incremental release: only what could still become part of a span is held --


CTX = RequestContext(tenant="acme", request_id="w1")


def full_check(screener: Screener, policy: EffectivePolicy, text: str) -> list[GuardrailEntity]:
    """guardrails.output's answer for one window, with real Presidio and the packaged policy."""
    verdict = screener.check(
        GuardrailCheck(
            ctx=CTX, direction="output", messages=[ChatMessage(role="assistant", content=text)]
        ),
        policy,
    )
    assert verdict.allowed
    return verdict.entities


def streamed(
    answer: str, size: int, checker: Callable[[str], list[GuardrailEntity]]
) -> tuple[list[str], int, int]:
    """Feed `answer` in `size`-character tokens through the window, checking each window as
    the runtime does; (what reached the client, characters generated before the first
    release, number of checks)."""
    window = OutputWindow()
    sent: list[str] = []
    first = -1
    generated = 0
    checks = 0
    pieces = [answer[i : i + size] for i in range(0, len(answer), size)]
    for i, piece in enumerate(pieces):
        generated += len(piece)
        deltas = [Delta(content=piece)]
        if i == len(pieces) - 1:
            deltas.append(Delta(finish_reason="stop"))
        for index in window.add(deltas):
            checks += 1
            d = window.release(index, checker(window.text(index)), final=False)
            if d is not None and d.content:
                sent.append(d.content)
                if first < 0:
                    first = generated
    for index in window.pending():
        checks += 1
        d = window.release(index, checker(window.text(index)), final=True)
        if d is not None and d.content:
            sent.append(d.content)
            if first < 0:
                first = generated
    return sent, first, checks


ANSWERS = [
    "Sure. You can write to ada.lovelace@example.com or call +1 415 555 0132 any day, "
    "and she will answer within the hour.",
    "Hello! My colleague Jiry Holtman can help: his mobile is 020 7946 0958 and his mail "
    "is jiry.holtman@example.org, so reach out today.",
    "The card 4111 1111 1111 1111 was declined; please try again with another one.",
    "Write to ops@example.net",  # the span runs to the end of the answer
]


def test_a_span_split_across_deltas_is_never_partly_released(
    screener: Screener, policy: EffectivePolicy
) -> None:
    def checker(text: str) -> list[GuardrailEntity]:
        return full_check(screener, policy, text)

    rewritten = 0
    for answer in ANSWERS:
        whole = full_check(screener, policy, answer)
        expected = apply_spans(answer, whole, len(answer))
        values = [answer[s.start : s.end] for s in whole if s.action != "allow"]
        rewritten += len(values)
        for size in (1, 2, 3, 5, 8):
            sent, _, _ = streamed(answer, size, checker)
            shown = "".join(sent)
            # What reached the client is what the full check of the whole answer gives.
            assert shown == expected, (size, answer, shown)
            for value in values:
                if value in answer:
                    # Not a piece of it, in any delta or across deltas.
                    assert not any(value[:k] in shown for k in range(4, len(value) + 1))


def test_the_first_words_leave_at_once_and_plain_numbers_are_not_held_to_the_end() -> None:
    answer = "Hello! How can I help you today? There were 12 sailors on board, I think."
    sent, first, checks = streamed(answer, 3, check)
    assert "".join(sent) == answer
    # Released as soon as one everyday word has followed "Hello!": not 96 characters later.
    assert sent[0] == "Hello! " and first <= len("Hello! How ca")
    # One extra check for the first words, then one per stride, and one at the end.
    assert checks <= 2 + len(answer) // 32 + 1
    # A number waits only for the next everyday word.
    assert held_from("There were 12 sailors on") == len("There were 12 sailors ")


def test_what_is_held_is_what_could_still_join_a_span() -> None:
    assert held_from("My name is Jiry Holtman ") == len("My name is ")
    assert held_from("call +44 20 7946 ") == len("call ")
    assert held_from("write to ada@exam") == len("write to ")
    assert held_from("Ludwig van ") == 0
    assert held_from("I'm fine and ") == len("I'm fine and ")
    assert held_from("password = hunter") == len("password ")
    assert held_from("你好世界") == 0  # no spaces: released at the HOLD_CHARS bound
    assert everyday("The") and everyday("hello,") and everyday("well-known")
    assert not any(everyday(w) for w in ("Will", "May", "Holtman", "12", "a@b", "van", "AKIA"))


def test_a_json_answer_is_held_whole_and_leaves_as_the_guardrails_document() -> None:
    from libs.events import GenerationParams
    from libs.guard_window import structure_of

    assert structure_of(GenerationParams(response_format={"type": "json_object"})) == "json"
    assert structure_of(GenerationParams(response_format={"type": "json_schema"})) == "json"
    assert structure_of(GenerationParams()) == "text"
    window = OutputWindow({"<PERSON_1>": 'Ada "the" Countess'}, structure="json")
    doc = '{"a": 4155550132, "to": "<PERSON_1>", "note": "call +1 415 555 0132 now please"}'
    for i in range(0, len(doc), 3):
        # Partial JSON is never checked nor released: the document is checked whole.
        assert window.add([Delta(content=doc[i : i + 3])]) == []
    assert window.add([Delta(finish_reason="stop")]) == [0]
    assert window.structure_of(0) == "json" and window.text(0) == doc
    rewritten = doc.replace("+1 415 555 0132", "<PHONE_NUMBER>")  # as the guardrail answers
    d = window.release(0, [], final=True, document=rewritten)
    assert d is not None and d.finish_reason == "stop" and d.logprobs is None
    assert json.loads(d.content) == {
        "a": 4155550132,
        "to": 'Ada "the" Countess',
        "note": "call <PHONE_NUMBER> now please",
    }
    # Cut by the token limit, it no longer parses: screened as text, said to be `length`.
    cut = OutputWindow(structure="json")
    cut.add([Delta(content='{"a": 12, "b": "x'), Delta(finish_reason="length")])
    assert cut.structure_of(0) == "text"
