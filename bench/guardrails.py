"""Guardrail quality and speed on generated, labeled data: `python -m bench.guardrails`.

PII: sentences from varied templates filled by Faker in seven locales, every PII span
labeled; a predicted span counts when it overlaps a labeled span of the same type.
Injection: public corpora from PyPI packages and an everyday benign set, split before any
tuning (bench/data/guardrails/split.json, built by bench/data/guardrails/build_corpora.py):
the table shows the held-out part of the tuning corpora next to corpora never used in tuning.
Latency: the whole input check (PII + injection + actions) per message, as the service
runs it, under the packaged global policy.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import random
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import faker.providers.date_time as faker_dates
from faker import Faker
from faker.providers.address.it_IT import Provider as ItalianAddresses

from libs.context import RequestContext
from libs.events import ChatMessage, GuardrailCheck

if TYPE_CHECKING:
    from services.guardrails.screen import Screener

SEED = 20240611

# The generated sets are the same in every run, on every day: Faker's Italian cities are a
# list made from a set (its order, and so every value drawn after a city, changed with
# Python's hash seed), a social security number came from an unseeded Faker, and dates
# (a birth date, "date_time", "year", a weekday) are drawn up to the current time. The
# cities are sorted here, the number drawn from the set's own random stream, and Faker's
# clock stands at REFERENCE_NOW while a set is made (`faker_clock`).
ItalianAddresses.cities = sorted(ItalianAddresses.cities)
REFERENCE_NOW = (2026, 11, 29, 12, 0, 0)


class _AnyOf(type):
    """Faker checks `isinstance(value, datetime)` on dates it made itself: any date or
    datetime of the standard library passes for the fixed classes."""

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, cls.__mro__[1])


class _FixedDatetime(datetime.datetime, metaclass=_AnyOf):
    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> _FixedDatetime:
        return cls(*REFERENCE_NOW, tzinfo=tz)


class _FixedDate(datetime.date, metaclass=_AnyOf):
    @classmethod
    def today(cls) -> _FixedDate:
        return cls(*REFERENCE_NOW[:3])


def faker_clock() -> Any:
    """Faker's date provider reads REFERENCE_NOW as the current time."""
    return mock.patch.multiple(faker_dates, datetime=_FixedDatetime, dtdate=_FixedDate)


def _ssn(rng: random.Random) -> str:
    """A US social security number of Faker's en_US shape (area 001-899 but 666)."""
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"


N_PII = 3000
LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL"]
TYPES = ["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS"]
EXTRA = ["US_SSN", "DATE_OF_BIRTH", "URL", "US_DRIVER_LICENSE"]
SCORED = TYPES + EXTRA

TEMPLATES = [
    "Hi, I'm {PERSON} and you can reach me at {EMAIL_ADDRESS}.",
    "Please call {PERSON} on {PHONE_NUMBER} before Friday.",
    "Refund the payment made with card {CREDIT_CARD}, it was charged twice.",
    "Transfer the deposit to {IBAN_CODE}, account holder {PERSON}.",
    "Login attempts from {IP_ADDRESS} were blocked last night.",
    "Customer {PERSON}, SSN {US_SSN}, asked for a copy of the contract.",
    "{PERSON} (date of birth {DATE_OF_BIRTH}) joined the programme in March.",
    "Send the brochure to {EMAIL_ADDRESS} and put {PERSON} in copy.",
    "Our new vendor portal is {URL}, ask {PERSON} for access.",
    "My number changed to {PHONE_NUMBER}, please update my file.",
    "Can you draft a reply to {PERSON} confirming the meeting on Tuesday?",
    "The VPN gateway {IP_ADDRESS} and the backup host {IP_ADDRESS} both time out.",
    "Card number {CREDIT_CARD}, expiry next year, name on card {PERSON}.",
    "For payroll use IBAN {IBAN_CODE}. Questions go to {EMAIL_ADDRESS}.",
    "Note from the call with {PERSON}: she prefers email ({EMAIL_ADDRESS}) over phone.",
    "Patient {PERSON} was born on {DATE_OF_BIRTH} and lives nearby.",
    "Forward the invoice to {PERSON} at {EMAIL_ADDRESS} or call {PHONE_NUMBER}.",
    "Why does the server at {IP_ADDRESS} reject connections from our office?",
    "I paid with {CREDIT_CARD} but the order never arrived.",
    "Summarise this complaint from {PERSON}: the parcel was damaged.",
    "{PERSON} asked whether {PERSON} could take over the project.",
    "Reach our support desk at {PHONE_NUMBER} or {EMAIL_ADDRESS}.",
    "Please check the SEPA mandate for {IBAN_CODE} before the first debit.",
    "Thanks {PERSON}, I received the documents.",
    "Write a short bio for {PERSON}, our new head of marketing.",
    "The quarterly report is due on Friday; nothing personal in here.",
    "Compare the two plans and recommend one for a team of five.",
]


def _value(fake: Faker, rng: random.Random, kind: str) -> str:
    if kind == "PERSON":
        return fake.name() if rng.random() < 0.5 else f"{fake.first_name()} {fake.last_name()}"
    if kind == "EMAIL_ADDRESS":
        return str(fake.email())
    if kind == "PHONE_NUMBER":
        return str(fake.phone_number())
    if kind == "CREDIT_CARD":
        n = str(fake.credit_card_number(card_type=rng.choice(["visa", "mastercard", "amex"])))
        if rng.random() < 0.4 and len(n) == 16:
            sep = rng.choice([" ", "-"])
            n = sep.join(n[i : i + 4] for i in range(0, 16, 4))
        return n
    if kind == "IBAN_CODE":
        iban = str(fake.iban())
        if rng.random() < 0.5:
            iban = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
        return iban
    if kind == "IP_ADDRESS":
        return str(fake.ipv4() if rng.random() < 0.8 else fake.ipv6())
    if kind == "US_SSN":
        return _ssn(rng)
    if kind == "DATE_OF_BIRTH":
        d = fake.date_of_birth(minimum_age=18, maximum_age=90)
        return d.strftime(rng.choice(["%d/%m/%Y", "%Y-%m-%d", "%B %d, %Y", "%d %B %Y"]))
    if kind == "URL":
        return str(fake.url()) + rng.choice(["", "docs", "login?next=/home"])
    raise ValueError(kind)


def pii_set(n: int = N_PII, seed: int = SEED) -> list[tuple[str, list[tuple[str, int, int]]]]:
    with faker_clock():
        return _pii_set(n, seed)


def _pii_set(n: int, seed: int) -> list[tuple[str, list[tuple[str, int, int]]]]:
    rng = random.Random(seed)
    fakers = {loc: Faker(loc) for loc in LOCALES}
    for i, f in enumerate(fakers.values()):
        f.seed_instance(seed + i)
    out = []
    for _ in range(n):
        fake = fakers[rng.choice(LOCALES)]
        template = rng.choice(TEMPLATES)
        text, spans, pos = "", [], 0
        while True:
            start = template.find("{", pos)
            if start < 0:
                text += template[pos:]
                break
            end = template.index("}", start)
            kind = template[start + 1 : end]
            text += template[pos:start]
            value = _value(fake, rng, kind)
            spans.append((kind, len(text), len(text) + len(value)))
            text += value
            pos = end + 1
        out.append((text, spans))
    return out


# -- injection: public corpora, split fixed in bench/data/guardrails/split.json --

CORPORA = Path(__file__).parent / "data" / "guardrails" / "corpora.jsonl"


def corpora() -> list[dict]:
    """Every labelled item with its source and split (tune / heldout / cross / dropped)."""
    return [json.loads(x) for x in CORPORA.read_text().split("\n") if x]


def injection_table(scores: dict[str, float], threshold: float) -> tuple[list[str], dict]:
    """Lines of the evaluation table (per source: in-corpus held-out next to cross-corpus,
    and the tuning split for reference), and the totals per split."""
    items = [it for it in corpora() if it["id"] in scores]
    lines = [
        f"{'source':<24}{'split':<9}{'attacks':>8}{'TPR':>7}{'benign':>8}{'FPR':>7}",
    ]
    totals: dict[str, dict[str, float]] = {}
    order = ["heldout", "cross", "tune"]
    sources = sorted({it["source"] for it in items})

    def row(name: str, split: str, part: list[dict]) -> dict[str, float]:
        pos = [scores[it["id"]] for it in part if it["label"]]
        neg = [scores[it["id"]] for it in part if not it["label"]]
        tpr = sum(x >= threshold for x in pos) / len(pos) if pos else float("nan")
        fpr = sum(x >= threshold for x in neg) / len(neg) if neg else float("nan")
        lines.append(f"{name:<24}{split:<9}{len(pos):>8}{_f(tpr):>7}{len(neg):>8}{_f(fpr):>7}")
        return {"attacks": len(pos), "tpr": tpr, "benign": len(neg), "fpr": fpr}

    for split in order:
        for source in sources:
            part = [it for it in items if it["source"] == source and it["split"] == split]
            if part:
                row(source, split, part)
        totals[split] = row("ALL", split, [it for it in items if it["split"] == split])
        lines.append("")
    return lines, totals


def _f(x: float) -> str:
    return "-" if x != x else f"{x:.3f}"


# -- PII, held out: presidio-evaluator's templates and names, filled with our own seeds --
#
# presidio-evaluator 0.3.2 (MIT) ships the sentence templates and the FakeNameGenerator
# names its generator fills; its own generator needs pandas 3 and transformers 5, which the
# platform does not install, so bench/data/guardrails/pii/ keeps the two files and the code
# below fills them the same way (Faker for everything else). The split is fixed by a digest
# of each template and each name: `tune` templates and names (PII_TUNE_SEED) may be looked
# at while working on the recognisers; `heldout` ones (PII_HELDOUT_SEED) are only scored.
PII_DATA = Path(__file__).parent / "data" / "guardrails" / "pii"
PII_TUNE_SEED = 7
PII_HELDOUT_SEED = 20261129
# The tune templates filled again by presidio-evaluator's generator (generated_tune_reseeded).
PII_TUNE_RESEED = 97
PE_LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL"]
# Template slot -> our entity type (None: filled, not scored; a PII label on it is wrong).
PE_SLOTS: dict[str, str | None] = {
    "person": "PERSON", "name": "PERSON", "first_name": "PERSON", "last_name": "PERSON",
    "name_female": "PERSON", "name_male": "PERSON", "first_name_male": "PERSON",
    "first_name_female": "PERSON", "first_name_nonbinary": "PERSON",
    "last_name_male": "PERSON", "last_name_female": "PERSON",
    "phone_number": "PHONE_NUMBER", "email": "EMAIL_ADDRESS",
    "credit_card_number": "CREDIT_CARD", "iban": "IBAN_CODE", "ip_address": "IP_ADDRESS",
    "ssn": "US_SSN", "date_of_birth": "DATE_OF_BIRTH", "url": "URL",
    "us_driver_license": "US_DRIVER_LICENSE",
}  # fmt: skip


def _pe_part(key: str) -> str:
    return "tune" if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 2 == 0 else "heldout"


def pe_templates(split: str) -> list[str]:
    lines = (PII_DATA / "presidio_evaluator_templates.txt").read_text().splitlines()
    return [t.strip() for t in lines if t.strip() and _pe_part(t.strip()) == split]


def pe_names(split: str) -> list[dict[str, str]]:
    with (PII_DATA / "presidio_evaluator_names.csv").open() as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if _pe_part(r["given"] + " " + r["surname"]) == split]


def _pe_fill(slot: str, fake: Faker, rng: random.Random, people: list[dict[str, str]]) -> str:
    p = rng.choice(people)
    if slot in ("person", "name", "name_female", "name_male"):
        return f"{p['given']} {p['surname']}"
    if slot.startswith("first_name"):
        return p["given"]
    if slot.startswith("last_name"):
        return p["surname"]
    if slot == "credit_card_number":
        return str(fake.credit_card_number())
    if slot == "date_of_birth":
        d = fake.date_of_birth(minimum_age=18, maximum_age=90)
        return d.strftime(rng.choice(["%d/%m/%Y", "%Y-%m-%d", "%B %d, %Y", "%m/%d/%Y"]))
    if slot == "ip_address":
        return str(fake.ipv4() if rng.random() < 0.8 else fake.ipv6())
    if slot == "us_driver_license":
        return f"{rng.choice('ABCDEFGH')}{rng.randrange(10**6, 10**7)}"
    if slot in ("nation_woman", "nation_plural", "nationality"):
        return str(fake.country())
    if slot == "age":
        return str(rng.randrange(18, 90))
    if slot == "ssn":
        return _ssn(rng)
    if slot == "organization":
        return str(fake.company())
    try:
        return str(getattr(fake, slot)())
    except AttributeError:
        return str(fake.word())


def pe_sentences(split: str, n: int) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """`n` sentences of the split, each with its labelled spans (type, start, end)."""
    with faker_clock():
        return _pe_sentences(split, n)


def _pe_sentences(split: str, n: int) -> list[tuple[str, list[tuple[str, int, int]]]]:
    seed = PII_TUNE_SEED if split == "tune" else PII_HELDOUT_SEED
    rng = random.Random(seed)
    fakers = [Faker(loc) for loc in PE_LOCALES]
    for i, f in enumerate(fakers):
        f.seed_instance(seed + i)
    pool, people = pe_templates(split), pe_names(split)
    out = []
    for _ in range(n):
        template, fake = rng.choice(pool), rng.choice(fakers)
        text, spans, pos = "", [], 0
        for m in re.finditer(r"\{\{(\w+)\}\}", template):
            text += template[pos : m.start()]
            value = _pe_fill(m.group(1), fake, rng, people)
            kind = PE_SLOTS.get(m.group(1))
            if kind is not None:
                spans.append((kind, len(text), len(text) + len(value)))
            text += value
            pos = m.end()
        out.append((text + template[pos:], spans))
    return out


def pe_generated(split: str) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """The sentences presidio-evaluator's own generator made over the split's templates
    (bench/data/guardrails/build_pii_sentences.py), each with the spans of the types scored."""
    out: list[tuple[str, list[tuple[str, int, int]]]] = []
    with (PII_DATA / f"generated_{split}.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            spans = []
            for _, s, e, slot in row["spans"]:
                kind = PE_SLOTS.get(slot)
                if kind is not None:
                    spans.append((kind, int(s), int(e)))
            out.append((str(row["text"]), spans))
    return out


def pii_table(
    screener: Screener,
    policy: Any,
    ctx: RequestContext,
    data: list[tuple[str, list[tuple[str, int, int]]]],
    latencies: list[float],
    targeted: bool,
) -> tuple[list[str], bool]:
    """Per entity: gold, predicted, precision, recall; a prediction counts when it overlaps a
    labelled span of its type (a PII label on an unlabelled value, e.g. a city, is wrong)."""
    tp_pred: dict[str, int] = defaultdict(int)
    n_pred: dict[str, int] = defaultdict(int)
    found: dict[str, int] = defaultdict(int)
    n_gold: dict[str, int] = defaultdict(int)
    for text, gold in data:
        start = time.perf_counter()
        # The full report, as the HTTP check gets it: a sentence the classifier flags is still
        # scored on its PII (a chat's check would stop at the block).
        verdict = screener.check(
            GuardrailCheck(ctx=ctx, messages=[ChatMessage(role="user", content=text)], report=True),
            policy,
        )
        latencies.append((time.perf_counter() - start) * 1000)
        pred = [(e.type, e.start, e.end) for e in verdict.entities if e.type in SCORED]
        for kind, s, e in gold:
            n_gold[kind] += 1
            if any(k == kind and ps < e and s < pe for k, ps, pe in pred):
                found[kind] += 1
        for kind, s, e in pred:
            n_pred[kind] += 1
            if any(k == kind and s < ge and gs < e for k, gs, ge in gold):
                tp_pred[kind] += 1
    lines = [f"{'entity':<18}{'gold':>6}{'pred':>6}{'precision':>11}{'recall':>8}  target"]
    ok = True
    for kind in [*SCORED, "ALL"]:
        g = sum(n_gold.values()) if kind == "ALL" else n_gold[kind]
        n = sum(n_pred.values()) if kind == "ALL" else n_pred[kind]
        tp = sum(tp_pred.values()) if kind == "ALL" else tp_pred[kind]
        f = sum(found.values()) if kind == "ALL" else found[kind]
        if not g and not n:
            continue
        p = tp / n if n else 1.0
        r = f / g if g else 1.0
        target = ""
        if targeted and kind in ("PERSON", "ALL"):
            met = r >= 0.95 and (kind == "PERSON" or p >= 0.90)
            ok &= met
            goal = "R>=0.95" if kind == "PERSON" else "P>=0.90 R>=0.95"
            target = f"{goal} {'met' if met else 'MISSED'}"
        lines.append(f"{kind:<18}{g:>6}{n:>6}{p:>11.3f}{r:>8.3f}  {target}")
    return lines, ok


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    t0 = time.perf_counter()
    # Imported here: the data generators above load without spaCy and the models.
    from services.guardrails.adapters.operators import PresidioOperators
    from services.guardrails.adapters.policy_files import PolicyStore
    from services.guardrails.adapters.presidio import PresidioPii
    from services.guardrails.injection import InjectionDetector, train_classifier
    from services.guardrails.screen import MessageMemo, Screener

    pii = PresidioPii()
    detector = InjectionDetector(train_classifier())
    # No memo: every message is screened in full, so a repeated text is timed as new.
    screener = Screener(pii, detector, PresidioOperators(), memo=MessageMemo(size=0))
    policy = PolicyStore(Path("/nonexistent")).get("bench")
    ctx = RequestContext(tenant="bench", request_id="bench")
    print(f"setup (spaCy, Presidio, classifier training): {time.perf_counter() - t0:.1f} s")

    latencies: list[float] = []
    ok = True
    sets = [
        (f"in-house templates, tuning (seed {SEED})", pii_set(), False),
        ("presidio-evaluator templates, tune split", pe_sentences("tune", 1000), False),
        (
            f"presidio-evaluator templates, HELD OUT (seed {PII_HELDOUT_SEED})",
            pe_sentences("heldout", 1500),
            False,
        ),
        (
            f"presidio-evaluator's own generator, tune split (seed {PII_TUNE_SEED})",
            pe_generated("tune"),
            False,
        ),
        (
            f"presidio-evaluator's own generator, tune split again (seed {PII_TUNE_RESEED})",
            pe_generated("tune_reseeded"),
            False,
        ),
        (
            "presidio-evaluator's own generator, 250 templates written here "
            "(seeds 31, 41, 53, 67, 79, 83)",
            pe_generated("written") + pe_generated("written_5") + pe_generated("written_6"),
            False,
        ),
        (
            f"presidio-evaluator's own generator, HELD OUT (seed {PII_HELDOUT_SEED})",
            pe_generated("heldout"),
            True,
        ),
    ]
    for title, data, targeted in sets:
        lines, met = pii_table(screener, policy, ctx, data, latencies, targeted)
        print(f"\nPII detection: {len(data)} sentences, {title}")
        print("\n".join(lines))
        ok &= met

    evaluated = [it for it in corpora() if it["split"] in ("tune", "heldout", "cross")]
    scores: dict[str, float] = {}
    # Timed as a chat's check: one blocked as an injection is not screened for PII.
    passed: list[float] = []  # the injection corpora's texts that were let through
    longest = 0
    for it in evaluated:
        start = time.perf_counter()
        verdict = screener.check(
            GuardrailCheck(ctx=ctx, messages=[ChatMessage(role="user", content=it["text"])]),
            policy,
        )
        latencies.append((time.perf_counter() - start) * 1000)
        scores[it["id"]] = verdict.injection_score
        if verdict.allowed:
            passed.append(latencies[-1])
            longest = max(longest, len(it["text"]))
    th = policy.injection_threshold
    lines, totals = injection_table(scores, th)
    print(
        f"\nInjection / jailbreak detection at threshold {th} (the packaged policy), "
        "per source and split (bench/data/guardrails/split.json): heldout = same corpus, "
        "never trained or calibrated on; cross = corpora never looked at while tuning"
    )
    print("\n".join(lines))
    for split in ("heldout", "cross"):
        t = totals[split]
        met = t["tpr"] >= 0.90 and t["fpr"] <= 0.02
        ok &= met
        print(
            f"{split}: TPR {_f(t['tpr'])} at FPR {_f(t['fpr'])}  "
            f"target TPR>=0.90 at FPR<=0.02 {'met' if met else 'MISSED'}"
        )
    greetings = [it for it in evaluated if it.get("category") == "greeting"]
    blocked = [it["text"] for it in greetings if scores[it["id"]] >= th]
    ok &= not blocked
    print(f"greetings of 1-3 words blocked: {len(blocked)} of {len(greetings)} {blocked or ''}")

    p50, p99 = statistics.median(latencies), _pct(latencies, 0.99)
    met = p50 <= 15 and p99 <= 50
    ok &= met
    print(
        f"\nInput check latency per message ({len(latencies)} messages, one process: one "
        "check at a time, Rampart beside spaCy on a second thread)"
    )
    print(
        f"P50 {p50:.1f} ms  P95 {_pct(latencies, 0.95):.1f} ms  P99 {p99:.1f} ms  "
        f"max {max(latencies):.1f} ms  target P50<=15 P99<=50 {'met' if met else 'MISSED'}"
    )
    print(
        f"of which the injection corpora's texts let through ({len(passed)}, up to "
        f"{longest:,} characters): "
        f"P50 {statistics.median(passed):.1f} ms  P95 {_pct(passed, 0.95):.1f} ms  "
        f"P99 {_pct(passed, 0.99):.1f} ms  max {max(passed):.1f} ms"
    )

    out_lat = []
    for text, _ in data[:500]:
        start = time.perf_counter()
        screener.check(
            GuardrailCheck(
                ctx=ctx,
                direction="output",
                messages=[ChatMessage(role="assistant", content=text)],
            ),
            policy,
        )
        out_lat.append((time.perf_counter() - start) * 1000)
    print(
        f"Output window check latency: P50 {statistics.median(out_lat):.1f} ms  "
        f"P99 {_pct(out_lat, 0.99):.1f} ms"
    )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; all targets {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
