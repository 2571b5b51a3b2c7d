"""Pure parts of memory and RAG: chunking, near-duplicates, filters, context pack, extraction."""

from __future__ import annotations

import json

import pytest

from libs.events import Citation, MemoryItem
from services.memory import extraction
from services.memory.chunking import chunk_pages, drop_near_duplicates
from services.memory.retrieval import (
    FilterError,
    conditions,
    context_pack,
    memory_user,
    rrf,
)
from services.memory.vectors import Cond


def test_chunks_keep_pages_and_respect_the_budget() -> None:
    pages = [(1, "word " * 300), (2, "Short page two.")]
    chunks = chunk_pages(pages, max_words=100, overlap=10)
    assert all(len(c.text.split()) <= 100 for c in chunks)
    assert {c.page for c in chunks} == {1, 2}
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_near_duplicates_are_dropped() -> None:
    a = "The quarterly report is due on the fifth of April every year, without exception."
    texts = [a, a.replace("exception", "exceptions"), "Something else entirely different here."]
    assert drop_near_duplicates(texts, threshold=0.8) == [0, 2]


def test_openai_filters_become_attribute_conditions() -> None:
    f = {
        "type": "and",
        "filters": [
            {"type": "eq", "key": "author", "value": "ann"},
            {"type": "in", "key": "year", "value": [2024, 2025]},
        ],
    }
    assert conditions(f) == [
        Cond("attributes.author", "ann"),
        Cond("attributes.year", [2024, 2025]),
    ]
    with pytest.raises(FilterError):
        conditions({"type": "eq", "key": "tenant\x00", "value": "x"})
    with pytest.raises(FilterError):
        conditions({"type": "or", "filters": []})


def test_rrf_rewards_agreement() -> None:
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]])
    assert fused[0][0] == "a" and {k for k, _ in fused} == {"a", "b", "c", "d"}


def test_context_pack_has_the_instruction_and_stays_in_budget() -> None:
    chunks = [
        (Citation(index=0, chunk_id=f"c{i}", file_id="f", filename="doc.txt"), "word " * 100)
        for i in range(10)
    ]
    text, kept = context_pack(chunks, [MemoryItem(id="m", text="Likes tea")], [], 400, rag=True)
    assert "only the context" in text and "don't know" in text
    assert "Likes tea" in text
    assert 1 <= len(kept) < 10 and [c.index for c in kept] == list(range(1, len(kept) + 1))
    assert "[1]" in text


def test_a_user_key_cannot_name_another_user() -> None:
    assert memory_user("key1", "user", "bob") == memory_user("key1", "user", None)
    assert memory_user("svc", "developer", "bob") != memory_user("svc", "developer", "eve")


def test_extraction_keeps_grounded_facts_and_falls_back() -> None:
    said = ["My name is Priya and I work on the billing migration project."]
    raw = json.dumps(
        {
            "memories": [
                {"type": "user", "text": "Name is Priya"},
                {"type": "project", "text": "Works on the billing migration"},
                {"type": "user", "text": "Enjoys skiing in Norway"},  # never said
            ]
        }
    )
    facts = extraction.from_model(raw, said)
    assert ("user", "Name is Priya") in facts
    assert all("skiing" not in t for _, t in facts)
    assert all("skiing" not in t for _, t in extraction.parse(raw, said))
    fallback = extraction.parse("not json", said)
    assert fallback and fallback[0][1].startswith("My name is Priya")
    assert extraction.parse("{}", ["What time is it?"]) == []
