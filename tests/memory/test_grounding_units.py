"""The grounding check (pure): sentences, lexical support, and the verdict per sentence."""

from __future__ import annotations

from services.memory import grounding

CHUNK = "Project Heron-1234 is led by Amara Osei from the Lisbon office, budget 4.2 million."
OTHER = "The cafeteria serves lunch between noon and two."


def test_sentences_drop_citation_markers_and_fragments() -> None:
    answer = "Amara Osei leads it [1]. Yes. The budget is 4.2 million euros [1, 2]."
    assert grounding.sentences(answer) == [
        "Amara Osei leads it.",
        "The budget is 4.2 million euros.",
    ]


def test_a_changed_number_or_name_loses_lexical_support() -> None:
    assert grounding.lexical("The budget is 4.2 million.", CHUNK) == 1.0
    assert grounding.lexical("The budget is 4.25 million.", CHUNK) < 0.7
    assert grounding.lexical("It is led by Chen Wei.", CHUNK) < 0.7


def test_judge_flags_what_no_chunk_supports_and_names_the_chunk_that_does() -> None:
    sents = [
        "Project Heron-1234 is led by Amara Osei.",
        "It was finished last spring by a contractor.",
        "I don't know when it started.",
    ]
    # The cosine matters less than the words here; give both chunks a middling one.
    cosine = [[0.7, 0.1], [0.3, 0.2], [0.1, 0.1]]
    out = grounding.judge(sents, [CHUNK, OTHER], cosine)
    assert [s.supported for s in out] == [True, False, True]
    assert out[0].chunk == 0 and out[1].chunk is None


def test_check_answers_judges_every_choice_against_the_chunks() -> None:
    chunks = ["The badge office is on floor 3 of the Zephyr building."]

    def embed(texts: list[str]) -> list[list[float]]:
        # Unit vectors: the same text gives cosine 1, a different one 0.
        return [[1.0, 0.0] if t == chunks[0] else [0.0, 1.0] for t in texts]

    judged = grounding.check_answers(
        {1: "The badge office is on floor 3 of the Zephyr building.", 0: "Lunch is free."},
        chunks,
        embed,
    )
    assert [(choice, s.supported, s.chunk) for choice, s in judged] == [
        (0, False, None),
        (1, True, 0),
    ]
    # No chunk, nothing supported; no sentence, nothing to judge.
    assert [s.supported for _, s in grounding.check_answers({0: chunks[0]}, [], embed)] == [False]
    assert grounding.check_answers({0: "Ok."}, chunks, embed) == []
