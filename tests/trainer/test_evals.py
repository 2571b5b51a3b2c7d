"""The eval harness's checks, pass rates, deltas and the gate's decision (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.trainer.evals import (
    JUDGE_SYSTEM,
    Check,
    EvalSet,
    deltas,
    gate,
    parse_verdict,
    rubric_requests,
    score,
    verdict_key,
)

SET = EvalSet.model_validate(
    {
        "name": "support",
        "items": [
            {
                "id": "r1",
                "task": "refunds",
                "messages": [{"role": "user", "content": "How long do refunds take?"}],
                "checks": [{"type": "contains", "value": "14 days", "ignore_case": True}],
            },
            {
                "id": "r2",
                "task": "refunds",
                "messages": [{"role": "user", "content": "Refund window?"}],
                "checks": [{"type": "regex", "value": r"\b14\s+days\b"}],
            },
            {
                "id": "g1",
                "task": "greeting",
                "messages": [{"role": "user", "content": "Say OK."}],
                "checks": [{"type": "exact", "value": "OK."}],
            },
        ],
    }
)


def test_checks() -> None:
    assert Check(type="exact", value="OK.").passes("  OK.\n")
    assert not Check(type="exact", value="OK.").passes("ok.")
    assert Check(type="exact", value="OK.", ignore_case=True).passes("ok.")
    assert Check(type="contains", value="Paris").passes("It is Paris.")
    assert not Check(type="contains", value="Paris").passes("It is paris.")
    assert Check(type="regex", value=r"^\d{3}$").passes("123")
    assert not Check(type="regex", value=r"^\d{3}$").passes("1234")
    with pytest.raises(ValidationError, match="does not compile"):
        Check(type="regex", value="(")


def test_eval_sets_refuse_duplicate_ids_and_empty_checks() -> None:
    item = {
        "id": "a",
        "messages": [{"role": "user", "content": "q"}],
        "checks": [{"type": "exact", "value": "x"}],
    }
    with pytest.raises(ValidationError, match="twice"):
        EvalSet.model_validate({"items": [item, item]})
    with pytest.raises(ValidationError):
        EvalSet.model_validate({"items": [{**item, "checks": []}]})


def test_pass_rate_per_task_and_overall() -> None:
    report = score(SET, {"r1": "Refunds take 14 Days.", "r2": "about two weeks", "g1": "OK."}, "m")
    assert report.tasks["refunds"].pass_rate == 0.5
    assert report.tasks["greeting"].pass_rate == 1.0
    assert report.pass_rate == pytest.approx(2 / 3)
    failed = {r.id: r.failed_checks for r in report.results if not r.passed}
    assert failed == {"r2": [r"regex:\b14\s+days\b"]}
    missing = score(SET, {"r1": "14 days"}, "m")
    assert [r.failed_checks for r in missing.results if r.id == "g1"] == [["no answer"]]


def test_deltas_against_the_serving_version() -> None:
    serving = score(SET, {"r1": "no idea", "r2": "no idea", "g1": "OK."}, "base")
    candidate = score(SET, {"r1": "14 days", "r2": "14 days", "g1": "OK."}, "acme/base:ft-v1")
    assert deltas(candidate, serving) == {"greeting": 0.0, "refunds": 1.0, "_overall": 0.666667}
    assert candidate.summary()["tasks"] == {"greeting": 1.0, "refunds": 1.0}


def test_the_gate_refuses_a_regression_and_promotes_an_improvement() -> None:
    serving = score(SET, {"r1": "14 days", "r2": "no", "g1": "OK."}, "acme/base:ft-v1")
    better = score(SET, {"r1": "14 days", "r2": "14 days", "g1": "OK."}, "acme/base:ft-v2")
    # Better on refunds but worse on greeting: a regression on one task is enough to refuse.
    mixed = score(SET, {"r1": "14 days", "r2": "14 days", "g1": "Sure."}, "acme/base:ft-v3")
    assert gate(better, serving).promote
    decision = gate(mixed, serving)
    assert not decision.promote
    assert any("greeting" in r for r in decision.reasons)
    assert decision.deltas["refunds"] == 0.5
    other_set = EvalSet.model_validate({"items": [SET.items[0].model_dump()]})
    assert not gate(score(other_set, {"r1": "14 days"}, "x"), serving).promote


RUBRIC = EvalSet.model_validate(
    {
        "name": "tone",
        "judge_model": "judge",
        "items": [
            {
                "id": "t1",
                "task": "tone",
                "messages": [{"role": "user", "content": "My parcel is late."}],
                "checks": [
                    {"type": "contains", "value": "sorry", "ignore_case": True},
                    {"type": "rubric", "value": "The answer apologises and offers a next step."},
                ],
            }
        ],
    }
)


def test_the_judges_verdict_is_read_from_its_first_pass_or_fail() -> None:
    assert parse_verdict("PASS") is True
    assert parse_verdict(" fail.") is False
    assert parse_verdict("Verdict: Passed, it apologises") is True
    assert parse_verdict("FAIL - though it would PASS elsewhere") is False
    assert parse_verdict("The answer is fine") is None
    assert parse_verdict("bypass the rule") is None  # a word, not a verdict
    with pytest.raises(ValueError, match="judged by a model"):
        Check(type="rubric", value="polite").passes("x")


def test_rubric_checks_are_judged_by_the_verdicts_given() -> None:
    answers = {"t1": "Sorry! I will open a claim with the carrier."}
    asks = rubric_requests(RUBRIC, answers)
    assert [k for k, _ in asks] == [verdict_key("t1", 1)]
    prompt = asks[0][1]
    assert prompt[0]["content"] == JUDGE_SYSTEM
    assert "apologises and offers a next step" in prompt[1]["content"]
    assert "open a claim with the carrier" in prompt[1]["content"]
    assert "My parcel is late." in prompt[1]["content"]
    assert rubric_requests(RUBRIC, {}) == []  # nothing answered: nothing to judge

    judged = score(RUBRIC, answers, "m", {verdict_key("t1", 1): True})
    assert judged.pass_rate == 1.0
    refused = score(RUBRIC, answers, "m", {verdict_key("t1", 1): False})
    assert refused.results[0].failed_checks == [
        "rubric:The answer apologises and offers a next step."
    ]
    unclear = score(RUBRIC, answers, "m", {verdict_key("t1", 1): None})
    assert "neither PASS nor FAIL" in unclear.results[0].failed_checks[0]
    unjudged = score(RUBRIC, answers, "m")
    assert "(no judge)" in unjudged.results[0].failed_checks[0]
    assert unjudged.pass_rate == 0.0
