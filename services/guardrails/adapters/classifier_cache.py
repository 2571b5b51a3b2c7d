"""The injection classifier, trained once (generated set + the corpora's tuning split) and
kept on disk.

The file name carries a digest of the generator's, glossary's, unmasking's and trainer's
sources and the tuning data, so a change to any retrains; the pickle is only ever read from
our own ENCLAVE_HOME.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

from services.guardrails import glossary, injection, injection_data, unmask


def _digest() -> str:
    h = hashlib.sha256()
    for mod in (glossary, injection, injection_data, unmask):
        h.update(Path(mod.__file__ or "").read_bytes())
    h.update(injection_data.TUNING.read_bytes())
    if injection_data.CALIBRATION.exists():
        h.update(injection_data.CALIBRATION.read_bytes())
    return h.hexdigest()[:12]


def load_or_train(folder: Path) -> Any:
    path = folder / f"injection-classifier-{_digest()}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    model = injection.train_classifier()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(model))
    tmp.replace(path)
    return model


def write_calibration() -> None:
    """Recompute the shipped calibration (after changing the training data or the pipeline):
    `python -m services.guardrails.adapters.classifier_cache`."""
    texts, labels = injection_data.training_set()
    extra_texts, extra_labels = injection_data.tuning_set()
    texts, labels = texts + extra_texts, labels + extra_labels
    norm = injection.read(texts)
    threshold = injection.calibrate(norm, labels, len(extra_texts))
    digest = injection.training_digest(norm, labels)
    injection_data.CALIBRATION.write_text(
        json.dumps({"digest": digest, "threshold": threshold}, indent=1) + "\n"
    )


if __name__ == "__main__":
    write_calibration()
