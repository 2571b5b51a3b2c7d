"""The Factbook labeled set (bench/factbook.py): rendering, chunking as the service does,
answers cut from the data, and the relevance rule. Fast: no model."""

from __future__ import annotations

import json
from pathlib import Path

from bench import factbook as fb

FRANCE = {
    "Geography": {
        "Elevation": {"highest point": {"text": "Mont Blanc 4,810"}, "note": "<b>note:</b> x"},
        "Natural resources": {
            "text": "<em>metropolitan France:</em> coal, iron ore, bauxite, zinc; "
            "<em>French Guiana</em>: gold"
        },
    },
    "Government": {
        "Country name": {"conventional short form": {"text": "France"}},
        "Capital": {"name": {"text": "Paris"}, "etymology": {"text": "from the Parisii"}},
        "National anthem(s)": {"title": {"text": '"La Marseillaise" (The Song of Marseille)'}},
    },
    "People and Society": {
        "Languages": {"Languages": {"text": "French (official) 100%, Proven&ccedil;al"}}
    },
}
PERU = {
    "Government": {
        "Country name": {"conventional short form": {"text": "Peru"}},
        "Capital": {"name": {"text": "Lima"}},
        "Government type": {"text": "presidential republic"},
    },
    "Economy": {"Exchange rates": {"Currency": {"text": "nuevo sol (PEN) per US dollar -"}}},
}


def _root(tmp_path: Path) -> Path:
    for region, code, data in (("europe", "fr", FRANCE), ("south-america", "pe", PERU)):
        (tmp_path / region).mkdir()
        (tmp_path / region / f"{code}.json").write_text(json.dumps(data))
    return tmp_path


def test_documents_name_their_country_in_each_field_and_leave_html_out(tmp_path: Path) -> None:
    docs = fb.documents(_root(tmp_path))
    assert [(d.code, d.name) for d in docs] == [("fr", "France"), ("pe", "Peru")]
    text = " ".join(fb.chunks(docs[0]))
    assert "France, Capital: name: Paris" in text
    assert "France, Elevation: highest point: Mont Blanc 4,810" in text
    assert "Provençal" in text and "<em>" not in text and "&ccedil;" not in text
    # Notes and long subfields are left out.
    assert "Parisii" not in text and "note:" not in text


def test_answers_are_cut_from_the_fields() -> None:
    got = {s.key: fb.answer_for(s, FRANCE) for s in fb.SPECS}
    assert got["capital"] == "Paris"
    assert got["highest_point"] == "Mont Blanc"
    assert got["anthem"] == "La Marseillaise"
    assert got["resources"] == "coal, iron ore, bauxite"
    assert got["languages"] == "French (official) 100%"
    assert got["currency"] == "" and got["climate"] == ""  # France has no such fields here
    assert fb.answer_for(fb.SPEC["currency"], PERU) == "nuevo sol (PEN)"


def test_relevance_is_the_country_document_and_the_answer_as_whole_words() -> None:
    assert fb.contains("France, Elevation: highest point: Mont Blanc 4,810;", "Mont Blanc")
    assert fb.contains("name: Paris", "paris") and not fb.contains("Parisii", "Paris")
    assert not fb.contains("fisheries and forests", "fish")
    assert fb.contains("French (official) 100%, Breton", "French (official) 100%")
    chunks = {"fr": ["France, Capital: name: Paris", "France, Area: 643,801 sq km"], "pe": []}
    q = fb.Question("What is the capital of France?", "fr", "Paris", "capital", "direct")
    assert fb.relevant(q, chunks) == {0}
    # The same answer text in another country's chunk does not count.
    assert fb.relevant(fb.Question("?", "pe", "Paris", "capital", "direct"), chunks) == set()


def test_questions_are_deterministic_answerable_and_phrased_three_ways(tmp_path: Path) -> None:
    docs = fb.documents(_root(tmp_path))
    chunks = {d.code: fb.chunks(d) for d in docs}
    qs = fb.questions(docs, chunks, 4, 4, seed=3)
    assert qs == fb.questions(docs, chunks, 4, 4, seed=3)
    assert [q.kind for q in qs] == ["direct"] * 4 + ["paraphrase"] * 4 + ["followup"] * 4
    names = {d.code: d.name for d in docs}
    for q in qs:
        assert fb.relevant(q, chunks), q
        if q.kind == "followup":
            # The country is named only in the turn before.
            assert names[q.code] not in q.text and names[q.code] in q.history[0][1]
        else:
            assert names[q.code] in q.text
    # A paraphrase avoids the field's own words.
    for spec in fb.SPECS:
        assert spec.key.split("_")[0] not in spec.paraphrase.lower(), spec.key


def test_the_real_corpus_builds() -> None:
    docs = fb.documents()
    assert len(docs) == 256
    france = next(d for d in docs if d.code == "fr")
    assert france.name == "France"
    assert any("France, Capital: name: Paris" in c for c in fb.chunks(france))
