"""The evaluation split is what the manifest says: nothing tuned on is ever scored as held-out
or cross-corpus, and the service trains on exactly the tuning items."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "bench" / "data" / "guardrails"
TUNING = ROOT / "services" / "guardrails" / "data" / "injection_tuning.jsonl"


def _items() -> list[dict]:
    return [json.loads(x) for x in (DATA / "corpora.jsonl").read_text().splitlines()]


def test_every_item_is_in_exactly_one_split_as_the_manifest_says() -> None:
    manifest = json.loads((DATA / "split.json").read_text())
    items = _items()
    by_id = {it["id"]: it for it in items}
    assert len(by_id) == len(items)
    seen: set[str] = set()
    for split in ("tune", "heldout", "cross", "dropped"):
        ids = set(manifest[split])
        assert not ids & seen, f"{split} shares items with another split"
        seen |= ids
        assert all(by_id[i]["split"] == split for i in ids)
    assert seen == set(by_id)
    for it in items:
        role = manifest["sources"][it["source"]]["role"]
        assert (it["split"] in ("cross", "dropped")) == (role == "cross")


def test_the_service_trains_on_the_tuning_split_only() -> None:
    tune = [it for it in _items() if it["split"] == "tune"]
    shipped = [json.loads(x) for x in TUNING.read_text().splitlines()]
    assert [(t["text"], t["label"]) for t in tune] == [(s["text"], s["label"]) for s in shipped]


def test_there_are_two_independent_injection_sources_and_a_benign_set_in_each_role() -> None:
    items = _items()
    for split in ("tune", "heldout", "cross"):
        part = [it for it in items if it["split"] == split]
        assert sum(it["label"] for it in part) >= 50
        assert sum(1 - it["label"] for it in part) >= 50
    cross_sources = {it["source"] for it in items if it["split"] == "cross" and it["label"]}
    assert len(cross_sources) >= 2
    greetings = [it for it in items if it.get("category") == "greeting"]
    assert {it["split"] for it in greetings} == {"tune", "heldout"}


def test_the_shipped_calibration_was_made_on_the_shipped_training_data() -> None:
    from services.guardrails.injection import read, training_digest
    from services.guardrails.injection_data import stored_calibration, training_set, tuning_set

    texts, labels = training_set()
    extra_texts, extra_labels = tuning_set()
    stored = stored_calibration()
    assert stored is not None, "run python -m services.guardrails.adapters.classifier_cache"
    assert stored[0] == training_digest(read(texts + extra_texts), labels + extra_labels)
    assert 0.05 <= stored[1] <= 0.99


# The sets' digest, made in a fresh process.
_DIGEST = """
import hashlib
from bench.guardrails import pe_sentences, pii_set
sets = [pe_sentences("tune", 300), pe_sentences("heldout", 300), pii_set(300)]
print(hashlib.sha256(repr(sets).encode()).hexdigest())
"""


def test_the_generated_pii_sets_are_the_same_in_every_run() -> None:
    """Under two hash seeds, the same sentences: Faker's Italian cities were ordered by the
    hash seed and SSNs drawn unseeded, so every run scored a slightly different set (its
    clock, which dates were drawn up to, is fixed too: bench/guardrails.py)."""
    digests = set()
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST],
            env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        digests.add(out.stdout.strip().splitlines()[-1])
    assert len(digests) == 1, digests
