"""Structure-aware output screening: JSON answers are rewritten inside string values only."""

from __future__ import annotations

import json
import random
from typing import Any

from libs.context import RequestContext
from libs.events import ChatMessage, GuardrailCheck, GuardrailVerdict
from services.guardrails.policy import EffectivePolicy
from services.guardrails.screen import Screener

CTX = RequestContext(tenant="acme", request_id="r1")


def _out(screener: Screener, policy: EffectivePolicy, text: str) -> GuardrailVerdict:
    return screener.check(
        GuardrailCheck(
            ctx=CTX,
            direction="output",
            structure="json",
            messages=[ChatMessage(role="assistant", content=text)],
        ),
        policy,
    )


def test_numbers_stay_numbers(screener: Screener, policy: EffectivePolicy) -> None:
    for doc in ['{ "a": 1 }', '{"a": 4155550132, "b": [12, 2024]}', "[1, 2, 3]"]:
        verdict = _out(screener, policy, doc)
        assert verdict.allowed and verdict.texts == [doc]


def test_values_inside_strings_are_rewritten_and_the_document_stays_valid(
    screener: Screener, policy: EffectivePolicy
) -> None:
    doc = json.dumps(
        {
            "contact": "Call +1 415 555 0132 or write to ada@example.com",
            "key": "AKIAIOSFODNN7EXAMPLE",
            "n": 12,
            "note": 'He said "hi"\nthen left',
        }
    )
    verdict = _out(screener, policy, doc)
    assert verdict.allowed
    data = json.loads(verdict.texts[0])
    assert set(data) == {"contact", "key", "n", "note"} and data["n"] == 12
    assert "ada@example.com" not in data["contact"] and "555 0132" not in data["contact"]
    assert data["key"] == "<AWS_ACCESS_KEY>"
    assert data["note"] == 'He said "hi"\nthen left'


def test_a_document_that_does_not_parse_is_blocked_with_the_reason(
    screener: Screener, policy: EffectivePolicy
) -> None:
    verdict = _out(screener, policy, '{ "a": 123, "city": "Paris, France}\n and then prose')
    assert not verdict.allowed and verdict.rule == "output.structure"
    assert "JSON" in verdict.reasons[0]


def test_fifty_seeded_schema_answers_parse_and_keep_their_types(
    screener: Screener, policy: EffectivePolicy
) -> None:
    rng = random.Random(50)
    cities = ["Paris", "Rotterdam", "Lisbon", "Kyoto", "Austin"]
    people = ["Ada Lovelace", "Jiry Holtman", "Lucrezia Borgia", "Kenji Sato"]
    for _ in range(50):
        answer: dict[str, Any] = {
            "a": rng.randrange(0, 10**10),
            "city": rng.choice(cities),
            "contact": f"{rng.choice(people)}, +44 20 7946 {rng.randrange(1000, 9999)}",
            "ok": rng.random() < 0.5,
            "tags": [rng.choice(cities), rng.randrange(100)],
        }
        text = json.dumps(answer, indent=rng.choice([None, 2]))
        verdict = _out(screener, policy, text)
        assert verdict.allowed, verdict.reasons
        got = json.loads(verdict.texts[0])
        assert got["a"] == answer["a"] and got["ok"] == answer["ok"]
        assert got["tags"][1] == answer["tags"][1] and isinstance(got["city"], str)
        assert "7946" not in got["contact"]
