"""Memory extraction without a model: the benchmark's matching rule and scores, and
parse / fallback / classify on items of the labeled set (bench/data/extraction_set.json)."""

from __future__ import annotations

import json
from typing import Any

from bench import extraction as bench
from services.memory import extraction

ITEMS = {item["id"]: item for item in bench.load_set()}


def said(item_id: str) -> list[str]:
    return bench.user_texts(ITEMS[item_id])


def expected(item_id: str) -> list[tuple[str, str]]:
    return list(ITEMS[item_id]["expected"])


def model_answer(*facts: tuple[str, str]) -> str:
    return json.dumps({"memories": [{"type": t, "text": x} for t, x in facts]})


# The matching rule


def test_content_words_drop_stop_words_and_plural_s() -> None:
    assert bench.content_words("The user's runbooks are in Confluence") == {
        "runbook",
        "confluence",
    }
    assert bench.content_words("I'm a nurse, class of 2019") == {"nurse", "class", "2019"}


def test_a_prediction_matches_when_it_covers_60_percent_of_the_key_words() -> None:
    fact = "Atlas launch March 3rd"  # four key words: three are enough, two are not
    assert bench.coverage(fact, "The Atlas launch is in March") == 0.75
    assert bench.match([("project", "The Atlas launch is in March")], [("project", fact)])
    assert not bench.match([("project", "Atlas is due soon in March")], [("project", fact)])


def test_matching_is_one_to_one_best_coverage_first() -> None:
    exp = [("user", "live Lyon"), ("user", "vegetarian")]
    whole = [("user", "I live in Lyon and I'm vegetarian.")]
    assert bench.match(whole, exp) == [(0, 0)]  # one sentence recalls one fact
    split = [("user", "I'm vegetarian"), ("user", "Lives in Lyon")]
    assert bench.match(split, exp) == [(0, 1), (1, 0)]


def test_scores_count_precision_recall_types_and_false_memories() -> None:
    score = bench.Score()
    score.add([("user", "Lives in Lyon"), ("project", "Is vegetarian")], expected("t07"))
    score.add([("user", "Likes Australia")], expected("t02"))  # a question: nothing to keep
    score.add([], expected("t06"))
    assert (score.expected, score.predicted, score.matched, score.typed) == (2, 3, 2, 1)
    assert round(score.precision, 2) == 0.67 and score.recall == 1.0
    assert score.type_accuracy == 0.5
    assert score.false_memory == 0.5


def test_the_set_is_split_in_halves_and_a_blind_part_covering_every_type() -> None:
    parts: dict[str, list[dict[str, Any]]] = {"tuning": [], "held-out": [], "blind": []}
    for item in ITEMS.values():
        parts[item["split"]].append(item)
    assert len(parts["tuning"]) + len(parts["held-out"]) >= 40
    assert abs(len(parts["tuning"]) - len(parts["held-out"])) <= 3
    for half in parts.values():
        assert {t for i in half for t, _ in i["expected"]} == set(extraction.TYPES)
        assert sum(not i["expected"] for i in half) >= 6
        assert sum(len(i["expected"]) > 1 for i in half) >= 5


# The extractor on labeled items


def test_fallback_keeps_each_clause_of_a_several_fact_turn() -> None:
    facts = extraction.fallback(said("t07"))
    assert facts == [("user", "I live in Lyon"), ("user", "I'm vegetarian")]
    assert len(bench.match(facts, expected("t07"))) == 2
    assert len(bench.match(extraction.fallback(said("t15")), expected("t15"))) == 2


def test_fallback_keeps_nothing_from_questions_small_talk_and_requests() -> None:
    for item_id in ("t02", "t06", "t10", "t14", "t18", "t22", "t25", "t27", "t46", "t54"):
        assert extraction.fallback(said(item_id)) == [], item_id
    # A statement before a question is kept, the question is not.
    assert extraction.fallback(said("t52")) == [("user", "I love hiking")]


def test_fallback_finds_instructions_and_third_person_facts() -> None:
    assert extraction.fallback(said("t20")) == [
        ("feedback", "Use bullet points rather than long paragraphs"),
        ("feedback", "skip the introductions"),
    ]
    assert extraction.fallback(said("t13"))[0][0] == "feedback"  # "When I ask for code, ..."
    for item_id in ("t09", "t17", "t31"):  # no "I" or "my" in these
        facts = extraction.fallback(said(item_id))
        assert bench.match(facts, expected(item_id)), item_id


def test_classify_types() -> None:
    assert extraction.classify("Keep your answers short") == "feedback"
    assert extraction.classify("The onboarding guide is at https://wiki.acme.dev/x") == "reference"
    assert extraction.classify("We track bugs in Jira") == "reference"
    assert extraction.classify("The Atlas launch is scheduled for March 3rd") == "project"
    assert extraction.classify("My GitHub handle is @pkumar") == "user"
    assert extraction.classify("I'm allergic to peanuts") == "user"


def test_model_facts_are_kept_only_when_the_user_stated_them() -> None:
    raw = model_answer(
        ("user", "Name is Priya"),
        ("user", "data engineer at Northwind"),
        ("user", "software engineer with a passion for data"),  # invented
        ("user", "Name is Priya"),  # repeated
    )
    facts = extraction.from_model(raw, said("t01"))
    assert facts == [("user", "Name is Priya"), ("user", "data engineer at Northwind")]
    assert len(bench.match(facts, expected("t01"))) == 2
    # Words of a question state nothing: the model's answer to it is no memory.
    raw = model_answer(("reference", "The capital of Australia is Canberra"))
    assert extraction.parse(raw, said("t02")) == []


def test_parse_keeps_the_users_statements_and_adds_what_the_model_found_besides() -> None:
    for raw in ("", "not json", '{"memories": []}', model_answer(("user", "Enjoys skiing"))):
        assert extraction.parse(raw, said("t19")) == [("user", "I'm allergic to peanuts")]
    # The model's fact repeats a statement: kept once, in the user's words.
    raw = model_answer(("user", "allergic to peanuts"))
    assert extraction.parse(raw, said("t19")) == [("user", "I'm allergic to peanuts")]
    # The rules find nothing in "Sam here, the new DBA"; the model's grounded fact stays.
    raw = model_answer(("user", "Sam, the new DBA"))
    assert extraction.parse(raw, ["Sam here, the new DBA."]) == [("user", "Sam, the new DBA")]


def test_fallback_scores_on_the_labeled_set() -> None:
    """A broken extractor fails here: the fallback alone on the tuning and held-out halves."""
    for split in ("tuning", "held-out"):
        part = [i for i in ITEMS.values() if i["split"] == split]
        score = bench.score(part, {}, bench.SYSTEMS["fallback only"])
        assert score.f1 >= 0.9 and score.false_memory == 0.0, split


def test_a_fact_said_again_is_not_remembered_twice() -> None:
    facts = [
        ("user", "I live in Lisbon."),
        ("user", "i live in lisbon"),
        ("project", "The launch is on May 3."),
    ]
    assert extraction.new_facts(facts, ["I LIVE IN LISBON!"]) == [
        ("project", "The launch is on May 3.")
    ]
    assert extraction.new_facts(facts, []) == [facts[0], facts[2]]
