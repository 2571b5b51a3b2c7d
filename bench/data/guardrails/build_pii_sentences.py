"""Writes bench/data/guardrails/pii/generated_{tune,heldout,tune_reseeded,written}.jsonl:
PII sentences made by presidio-evaluator 0.3.2's own generator (`PresidioSentenceFaker`, its
default providers and records, locale en_US, `lower_case_ratio=0.05` as in its own example),
over the tune and the held-out halves of its templates (the same digest split as
bench/guardrails.py), the tune half again with another seed, and the templates written here.

This is the generator the outside check uses, with seeds of ours: its organisations come
from stock-exchange listings ("Morgan Stanley", "Akzo Nobel NV"), its people, streets and
towns from FakeNameGenerator records (a middle initial in one full name of five), its
addresses from its own formats, and one sentence in twenty is all lower case. The bench's
own fill of the same templates (`pe_sentences`, Faker in seven locales) has none of that.

Run by hand, in a virtual environment of its own: the package asks for pandas 3 and
transformers 5, which the project's environment does not take, so it is installed without
its dependencies beside the few its generator imports:

    python -m venv /tmp/pe && /tmp/pe/bin/pip install --no-deps presidio-evaluator==0.3.2 \
        && /tmp/pe/bin/pip install pandas faker spacy pyyaml tqdm python-dotenv requests \
           presidio-analyzer presidio-anonymizer \
        && PYTHONPATH=. /tmp/pe/bin/python bench/data/guardrails/build_pii_sentences.py [RUN ...]

Each line: {"text", "spans": [[type, start, end, slot]], "template"}; `slot` is the
template's own placeholder ("first_name", "date_of_birth"), which the bench maps to the
entity types it scores.
"""

import json
import random
import re
import sys
from pathlib import Path

from presidio_evaluator.data_generator import PresidioSentenceFaker

from bench.guardrails import PII_HELDOUT_SEED, PII_TUNE_RESEED, PII_TUNE_SEED, _pe_part, faker_clock

PII = Path(__file__).resolve().parent / "pii"
# (split, seed, sentences): the seeds of the bench's own fill.
RUNS = [
    ("tune", PII_TUNE_SEED, 2000, ""),
    ("heldout", PII_HELDOUT_SEED, 2000, ""),
    # The tune templates again with a seed of their own (2026-12-03): other values in the
    # same frames, to tell a rule that holds for a frame from one that holds for a fill.
    ("tune_reseeded", PII_TUNE_RESEED, 2000, ""),
    # Templates written here (none of presidio-evaluator's), four sets of 50, 50, 40 and 30,
    # each filled with its own seed into one file: frames of other kinds for its values.
    ("written", 31, 1500, "written_templates.txt"),
    ("written", 41, 1500, "written_templates_2.txt"),
    ("written", 53, 1500, "written_templates_3.txt"),
    ("written", 67, 1200, "written_templates_4.txt"),
    # A fifth set (2026-12-03), in a file of its own: its first look was taken before its
    # errors were read.
    ("written_5", 79, 1200, "written_templates_5.txt"),
    # A sixth set (2026-12-03, evening), written by a helper that never read the detector's
    # code: forms and tables, chat logs, British and German letters, logs and config.
    ("written_6", 83, 1200, "written_templates_6.txt"),
]
SLOT = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def main(only: set[str]) -> None:
    lines = (PII / "presidio_evaluator_templates.txt").read_text().splitlines()
    templates = [t.strip() for t in lines if t.strip()]
    done: set[str] = set()
    for split, seed, n, written in RUNS:
        if only and split not in only:
            continue
        chosen = (
            [t.strip() for t in (PII / written).read_text().splitlines() if t.strip()]
            if written
            else [t for t in templates if _pe_part(t) == split.split("_")[0]]
        )
        # The records' full names draw their middle initials from `random` while the
        # generator is built, before it seeds itself: seeded here, so a rerun is the same.
        random.seed(seed)
        faker = PresidioSentenceFaker(
            locale="en_US", lower_case_ratio=0.05, sentence_templates=chosen, random_seed=seed
        )
        with (PII / f"generated_{split}.jsonl").open("a" if split in done else "w") as out:
            done.add(split)
            # Faker's clock stands still, as for the bench's own fill: dates are drawn up to now.
            with faker_clock():
                samples = faker.generate_new_fake_sentences(n)
            for sample in samples:
                template = chosen[sample.template_id].replace("<", "{{").replace(">", "}}")
                slots = [s.lower() for s in SLOT.findall(template)]
                spans = sorted(sample.spans, key=lambda s: s.start_position)
                assert len(slots) == len(spans), (template, spans)
                row = {
                    "text": sample.full_text,
                    "spans": [
                        [s.entity_type, s.start_position, s.end_position, slot]
                        for s, slot in zip(spans, slots, strict=True)
                    ],
                    "template": chosen[sample.template_id],
                }
                out.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    # Names of RUNS to write (`tune_reseeded`); none: all of them.
    main(set(sys.argv[1:]))
