"""Writes services/guardrails/data/names.json: first names and surnames in Latin, Cyrillic
and Greek script from every Faker locale (the PERSON recogniser's gazetteer), and
services/guardrails/data/countries.json: the names of countries in English, from Faker's
English locales ("Austria": a span that is one is not a person; the names in other
languages were left out: "Komori", Croatian for the Comoros, is a Japanese surname). Run
by hand after a Faker upgrade: `python bench/data/guardrails/build_names.py`. The held-out
PII sentences use other names (presidio-evaluator's FakeNameGenerator list), not these.
"""

import importlib
import json
import unicodedata
from pathlib import Path

import faker
from faker.config import AVAILABLE_LOCALES

DATA = Path(__file__).resolve().parents[3] / "services" / "guardrails" / "data"
OUT = DATA / "names.json"
# Scripts with capitals, which the recogniser reads capitalisation in ("Иван Петров").
SCRIPTS = {"LATIN", "CYRILLIC", "GREEK"}
first: set[str] = set()
last: set[str] = set()
countries: set[str] = set()


def ok(n: object) -> bool:
    return (
        isinstance(n, str)
        and len(n) >= 3
        and n[:1].isupper()
        and all(ch.isalpha() or ch in "-'" for ch in n)
        and unicodedata.name(n[0], "").split()[0] in SCRIPTS
    )


for loc in AVAILABLE_LOCALES:
    try:
        m = importlib.import_module(f"faker.providers.person.{loc}")
    except Exception:
        continue
    provider = m.Provider
    for attr, target in (
        ("first_names", first),
        ("first_names_male", first),
        ("first_names_female", first),
        ("first_names_nonbinary", first),
        ("last_names", last),
    ):
        v = provider.__dict__.get(attr)
        if v is None or isinstance(v, property):
            continue
        try:
            items = list(v.keys() if isinstance(v, dict) else v)
        except TypeError:
            continue
        target.update(n for n in items if ok(n))
for loc in (loc for loc in AVAILABLE_LOCALES if loc.startswith("en")):
    try:
        a = importlib.import_module(f"faker.providers.address.{loc}")
    except Exception:
        continue
    names = a.Provider.__dict__.get("countries")
    if isinstance(names, (list, tuple)):
        countries.update(n for n in names if isinstance(n, str) and n[:1].isupper())
(DATA / "countries.json").write_text(
    json.dumps({"faker": faker.VERSION, "countries": sorted(countries)}, ensure_ascii=False) + "\n"
)
OUT.write_text(
    json.dumps({"faker": faker.VERSION, "first": sorted(first), "last": sorted(last)}) + "\n"
)
print(len(first), len(last))
