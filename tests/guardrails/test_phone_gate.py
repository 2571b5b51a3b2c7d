"""`could_hold_phone`: a text it turns away holds nothing that phonenumbers' matcher finds
and `plausible_phone` keeps, so skipping the matcher there changes no verdict. Checked
against the matcher itself (Presidio's PhoneRecognizer, our regions and leniency) on the
PII benchmark's generated tune sentences, on written cases and on random strings made of
what a phone number is made of and what breaks one."""

from __future__ import annotations

import random

import pytest
from presidio_analyzer.predefined_recognizers import PhoneRecognizer

from bench.guardrails import pe_sentences
from services.guardrails.adapters.presidio import (
    PHONE_REGIONS,
    could_hold_phone,
    plausible_phone,
)

MATCHER = PhoneRecognizer(supported_regions=PHONE_REGIONS, leniency=0)


def kept(text: str) -> list[str]:
    """What the full matcher finds in `text` and plausible_phone keeps."""
    found = MATCHER.analyze(text, ["PHONE_NUMBER"], None)  # type: ignore[arg-type]
    return [text[r.start : r.end] for r in found if plausible_phone(text, r.start, r.end)]


@pytest.mark.parametrize(
    "text",
    [
        "Call me at +1 (415) 555-0132 tomorrow.",
        "Tel. 030 1234567",
        "office: 0161 496 0000 ext. 12",
        "Phone: 4155550132",
        "Tel \uff10\uff13\uff10 \uff11\uff12\uff13\uff14\uff15\uff16\uff17",  # full-width digits
        "Phone \u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",  # Arabic-Indic
        "Number: 415.555.0132;ext=9",
    ],
)
def test_where_the_matcher_keeps_a_number_the_gate_lets_it_run(text: str) -> None:
    assert kept(text), text  # the case is a phone number...
    assert could_hold_phone(text)  # ...and the gate does not skip it


def test_an_answer_of_short_numbers_between_words_is_skipped() -> None:
    answer = " ".join(f"w{i}" for i in range(16))  # the bench's stand-in engine's answer
    assert not could_hold_phone(answer)
    assert not kept(answer)
    assert not could_hold_phone("In 2023 we had 45 people on 3 floors, room 12.")


def test_no_skipped_text_had_a_number_to_keep() -> None:
    rng = random.Random(20261130)
    digits = ["1", "23", "456", "7890", "\u0663", "\uff11"]
    seps = [" ", "-", ".", "(", ")", "+", "/", " x", " ext. ", "#", "\n", " anexo ", ",", ":"]
    words = ["w", "b", "call ", "phone ", "int", "a", "e", "r", ";ext="]

    def made() -> str:
        out = []
        for _ in range(rng.randrange(3, 16)):
            r = rng.random()
            out.append(rng.choice(digits if r < 0.5 else seps if r < 0.8 else words))
        return "".join(out)

    texts = [text for text, _ in pe_sentences("tune", 600)] + [made() for _ in range(4000)]
    found = [(t, kept(t)) for t in texts]
    # Many numbers to keep among them, and many texts skipped: both sides are exercised.
    assert sum(bool(numbers) for _, numbers in found) > 300
    skipped = [(t, numbers) for t, numbers in found if not could_hold_phone(t)]
    assert len(skipped) > 1500
    assert [(t, numbers) for t, numbers in skipped if numbers] == []
