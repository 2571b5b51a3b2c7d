"""Rampart, the NER beside spaCy: its names, its addresses taking PERSON off streets, and the
windows that cover a long text."""

from __future__ import annotations

import pytest

from services.guardrails.adapters.presidio import PresidioPii, with_ner
from services.guardrails.adapters.rampart import RampartNer, people, windows


@pytest.fixture(scope="module")
def pii() -> PresidioPii:
    return PresidioPii()


def _people(pii: PresidioPii, text: str) -> list[str]:
    return [text[s.start : s.end] for s in pii.find(text, ["PERSON"], [], 0.5)]


def test_names_spacy_misses_are_found(pii: PresidioPii) -> None:
    # spaCy's small model: "Waldemar Ziegert" cut by "and" (a company joiner), "Fabijan" missed.
    assert _people(pii, "Hi, I'm Waldemar Ziegert and you can reach me at w@example.org.") == [
        "Waldemar Ziegert"
    ]
    assert "Fabijan" in _people(pii, 'Pauliina shouted at Fabijan: "What are you doing here?"')


def test_streets_and_companies_named_after_people_are_not_people(pii: PresidioPii) -> None:
    assert _people(pii, "Friðrik had given Evelyn his address: 314 Viale Leonardi") == [
        "Friðrik",
        "Evelyn",
    ]
    # Rampart calls this one a name; the company word in it says otherwise.
    company = "Piccinni-Bresciani SPA is a design agency based in Comelico."
    assert [company[s:e] for s, e in people(company, pii.ner.tags(company))] == [
        "Piccinni-Bresciani SPA"
    ]
    assert with_ner(company, [], pii.ner.tags(company), 0.5) == []
    company = "We'll meet Wednesday at Smith, Lloyd and Jackson, 9180 Fleming Pines"
    assert _people(pii, company) == []


def test_tags_and_offsets() -> None:
    ner = RampartNer()
    text = "Transfer it to Fernanda Morera Calatayud, Calle Mayor 5, Madrid."
    tags = {(t.type, text[t.start : t.end]) for t in ner.tags(text)}
    assert ("SURNAME", "Calatayud") in tags
    assert any(kind == "STREET_NAME" for kind, _ in tags)
    assert ner.tags("") == []


def test_a_long_text_is_read_in_overlapping_windows() -> None:
    ner = RampartNer()
    filler = "The weather was fine and the meeting went well. " * 60
    text = filler + "Please call Lucrezia Bianchi tomorrow. " + filler
    assert len(ner.tokenizer.encode(text, add_special_tokens=False).ids) > 512
    names = [text[t.start : t.end] for t in ner.tags(text) if t.type.endswith("NAME")]
    assert names == ["Lucrezia", "Bianchi"]


def test_windows_cover_every_token_and_start_at_a_word() -> None:
    word_ids: list[int | None] = [i // 3 for i in range(100)]  # three tokens a word
    spans = windows(word_ids, 10, 4)
    covered = {k for lo, hi in spans for k in range(lo, hi)}
    assert covered == set(range(100))
    assert all(hi - lo <= 10 for lo, hi in spans)
    assert all(word_ids[lo] != word_ids[lo - 1] for lo, _ in spans[1:])
