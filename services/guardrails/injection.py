"""Prompt-injection and jailbreak scoring: named heuristics plus a small text classifier.

The classifier (TF-IDF word and character n-grams, logistic regression) is trained at build
time, deterministically, on `injection_data.training_set()` (generated) plus the tuning
split of public corpora (`injection_data.tuning_set()`; bench/data/guardrails/split.json);
nothing is downloaded. Its decision point is calibrated on out-of-fold predictions for the
corpora's benign tuning texts and mapped to 0.5. The score is the larger of that calibrated
probability and the strongest heuristic that fired (halved when the classifier is sure the
text is ordinary), so each verdict can say why. Messages of at most three words are judged
by the heuristics alone, and one with fewer than three word n-grams the classifier knows by
its character n-grams and the heuristics. Long texts are also scored per window. Pure apart from the
scheduler's checkpoint (adapters/classifier_cache.py stores the model).
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy
import scipy.sparse
import scipy.special
import sklearn

from services.guardrails.glossary import gloss
from services.guardrails.injection_data import stored_calibration, training_set, tuning_set
from services.guardrails.linear import compile_linear
from services.guardrails.scheduler import checkpoint
from services.guardrails.unmask import unmask

# (reason, weight, pattern) — matched against normalised text (lowercase, leetspeak undone).
_HEURISTICS: list[tuple[str, float, Any]] = [
    (
        "instruction override",
        0.9,
        compile_linear(
            r"\b(ignore|disregard|forget|override|bypass|abandon)\b[\w\s,]{0,30}?"
            r"\b(previous|prior|above|earlier|preceding|all|your|any|initial|original|system)\b"
            r"[\w\s]{0,20}?\b(instructions?|rules|guidelines|directions|prompts?|constraints"
            r"|polic(y|ies)|programming|restrictions|directives)\b"
        ),
    ),
    (
        "system prompt extraction",
        0.85,
        compile_linear(
            r"\b(reveal|print|show|repeat|output|leak|display|dump|tell me|give me|recite)\b"
            r"[\w\s]{0,20}?\b(system prompt|initial (instructions|prompt)"
            r"|hidden (instructions|rules|prompt)|original prompt|developer message"
            r"|(your|the) (instructions|rules|prompt)"
            r" (verbatim|word for word)|everything (above|before) (this|my))"
        ),
    ),
    (
        "jailbreak persona",
        0.9,
        compile_linear(
            r"\b(do anything now|dan mode|developer mode (enabled|on)|enable developer mode"
            r"|jailbr(o|ea)ken?|no (content|ethical) (policy|polic(y|ies)|guidelines|filters)"
            r"|without (any )?(restrictions|filters|limits|rules|content policy)"
            r"|(unfiltered|uncensored|unrestricted) (ai|model|assistant|mode)"
            r"|never refuses?|broken free|not bound by|stay in character)\b"
        ),
    ),
    (
        "fake role delimiter",
        0.85,
        compile_linear(
            r"(<\|im_start\|>|<\|system\|>|</?system>|\[system( override)?\]|###\s*system"
            r"|begin new instructions|new instructions:|admin command|end of user input)"
        ),
    ),
    (
        "instructions aimed at the model inside content",
        0.8,
        compile_linear(
            r"\b(note|message|instruction)s? (to|for) (the )?(ai|assistant|chatbot|model|llm)"
            r"|\bif you are an? (ai|language model|llm|assistant)\b|\bai agents?:"
        ),
    ),
    (
        "refusal suppression",
        0.7,
        compile_linear(
            r"\b(you (cannot|can't|must not|may not) refuse|without any (warnings|disclaimers)"
            r"|safety rules do not apply|turn off your (filters|safety))\b"
        ),
    ),
]

_LEET = str.maketrans({"1": "i", "0": "o", "3": "e", "4": "a", "@": "a", "$": "s"})


def normalise(text: str) -> str:
    """Compatibility-folded, what hides words made plain (unmask.py), lowercase, leetspeak
    undone, whitespace collapsed."""
    t = unmask(unicodedata.normalize("NFKC", text)).lower().translate(_LEET)
    return re.sub(r"\s+", " ", t)


def glossed(norm: str) -> str:
    """What the classifier reads of a normalised text: the text, then the English glosses
    of its foreign stems (glossary.py), so that what it learnt of English attacks carries
    over to other languages."""
    extra = gloss(norm)
    return f"{norm} {extra}" if extra else norm


def read(texts: list[str]) -> list[str]:
    """What the classifier reads of each text (normalised, unmasked, glossed): made once
    per training and handed to the digest, the calibration and the fit."""
    return [glossed(normalise(t)) for t in texts]


@dataclass(frozen=True)
class InjectionResult:
    score: float
    reasons: list[str]


@dataclass
class InjectionModel:
    """The fitted pipeline and the probability calibrated as the decision point: the
    detector maps it to 0.5, so that a policy's threshold 0.5 means "as calibrated"."""

    pipeline: Any
    threshold: float


# Texts longer than this are also scored window by window (an instruction hidden in a long
# document is diluted in the whole), the highest window counting.
WINDOW = 1500
STEP = 1000
# A message of at most this many words carries no instruction the classifier can judge
# ("hi", "say hi.", "thanks a lot"): only the named heuristics can flag it.
SHORT_WORDS = 3
# Below this calibrated score a heuristic counts half (see InjectionDetector.score).
CONFIDENT_BENIGN = 0.1
# A text with fewer word n-grams the classifier knows is judged by its characters alone
# (and the heuristics). Each vectorizer's features are scaled to unit length, so the one
# known word of "Invite Pap and Schmitt." carried all of its block's weight: "and" alone
# (coefficient 3.2) flagged it (0.52), and "Speakers: IBM, SAP and HSBC." (0.56).
MIN_KNOWN_WORDS = 3


# Scripts written without spaces between words (Chinese, Japanese, Korean in part): their
# characters counted two to a word.
_UNSPACED = compile_linear(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]")


def words(norm: str) -> int:
    """The words of a normalised text: what spaces part, and in a script written without
    them, a word for every two characters ("你好" is one; an override in Chinese is not three
    words, which would be judged by the heuristics alone)."""
    return len(norm.split()) + sum(1 for _ in _UNSPACED.finditer(norm)) // 2


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def windows(norm: str) -> list[str]:
    if len(norm) <= WINDOW:
        return [norm]
    return [norm] + [norm[i : i + WINDOW] for i in range(0, len(norm) - STEP, STEP)]


class InjectionDetector:
    def __init__(self, model: Any) -> None:
        if not isinstance(model, InjectionModel):
            model = InjectionModel(model, 0.5)
        self.model = model
        self._lean = _lean_parts(model.pipeline)

    def _probabilities(self, texts: list[str]) -> Any:
        """P(attack) of each text. The fitted pipeline's own steps are called directly:
        its union of vectorizers, then the logistic regression's coefficients, without
        joblib's dispatch of the union and the classifier's checks of its input
        (tests/guardrails/test_screen.py: the same numbers as `predict_proba`), but for a
        text with fewer than MIN_KNOWN_WORDS known word n-grams: its words are left out."""
        # Fitted here on texts, not data frames: scikit-learn's checks of its input and
        # parameters are skipped too (they cost a quarter of a short message's score).
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            if self._lean is None:
                return self.model.pipeline.predict_proba(texts)[:, 1]
            vectorizers, coef, intercept = self._lean
            blocks = [v.transform(texts) for v in vectorizers]
            words = blocks[0].tocsr()  # _lean_parts: the word n-grams come first
            few = numpy.diff(words.indptr) < MIN_KNOWN_WORDS
            if few.any():
                blocks[0] = scipy.sparse.diags((~few).astype(words.dtype)) @ words
            features = scipy.sparse.hstack(blocks, "csr")
            return scipy.special.expit(features @ coef + intercept)

    def score(self, text: str) -> InjectionResult:
        if not text.strip():
            return InjectionResult(0.0, [])
        norm = normalise(text)
        reasons: list[str] = []
        best = 0.0
        for reason, weight, pattern in _HEURISTICS:
            if pattern.search(norm):
                reasons.append(f"heuristic: {reason}")
                best = max(best, weight)
        if words(norm) <= SHORT_WORDS:
            return InjectionResult(round(best, 4), reasons)
        p = 0.0
        parts = [glossed(w) for w in windows(norm)]
        for i in range(0, len(parts), 16):
            checkpoint()
            p = max(p, float(self._probabilities(parts[i : i + 16]).max()))
        calibrated = 1 / (1 + math.exp(-(_logit(p) - _logit(self.model.threshold))))
        if calibrated >= 0.5:
            reasons.append(f"classifier: {calibrated:.2f}")
        if calibrated < CONFIDENT_BENIGN:
            # The words of an override in a text the classifier is sure is ordinary (a
            # quoted notice, a question about jailbreaks): the heuristic alone is not enough.
            best /= 2
        return InjectionResult(round(max(best, calibrated), 4), reasons)


def _lean_parts(pipeline: Any) -> tuple[list[Any], Any, float] | None:
    """The vectorizers, coefficients and intercept of a fitted `_pipeline()`; None for any
    other model (then `predict_proba` scores it)."""
    try:
        if [name for name, _ in pipeline.steps] != ["features", "lr"]:
            return None
        union, lr = pipeline.named_steps["features"], pipeline.named_steps["lr"]
        if [name for name, _ in union.transformer_list] != ["words", "chars"]:
            return None
        vectorizers = [t for _, t in union.transformer_list]
        weights = getattr(union, "transformer_weights", None)
        if (
            weights
            or len(lr.classes_) != 2
            or any(not hasattr(v, "vocabulary_") for v in vectorizers)
        ):
            return None
        return vectorizers, lr.coef_[0], float(lr.intercept_[0])
    except (AttributeError, KeyError, TypeError):
        return None


def _pipeline() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
            (
                "chars",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(3, 5), min_df=3, sublinear_tf=True
                ),
            ),
        ]
    )
    return Pipeline(
        [
            ("features", features),
            ("lr", LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced")),
        ]
    )


# The calibration target: the share of the corpora's benign tuning texts (cross-validated)
# at or above the decision point. The generated benign texts are not counted: out of fold
# they score near 0 (templates), which would make any threshold look safe.
CALIBRATION_FPR = 0.015


def calibrate(norm: list[str], labels: list[int], real: int = 0, folds: int = 5) -> float:
    """The decision probability: the lowest at which at most CALIBRATION_FPR of the benign
    texts among the last `real` (all if 0) score as high, on out-of-fold predictions (each
    text scored by a model that did not train on it). `norm`: the texts as read (`read`)."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels)
    oof = np.zeros(len(norm))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(norm, y):
        model = _pipeline().fit([norm[i] for i in train], y[train])
        oof[test] = model.predict_proba([norm[i] for i in test])[:, 1]
    counted = np.arange(len(norm)) >= (len(norm) - real if real else 0)
    benign = np.sort(oof[(y == 0) & counted])[::-1]
    k = int(CALIBRATION_FPR * len(benign))
    return float(min(0.99, max(0.05, benign[k] + 1e-6)))


def train_classifier(
    texts: list[str] | None = None, labels: list[int] | None = None, calibrated: bool = True
) -> InjectionModel:
    """The fitted pipeline on the generated set plus the corpora's tuning split, and its
    calibrated decision point; a few seconds (the calibration fits it five more times)."""
    real = 0
    shipped = False
    if texts is None or labels is None:
        texts, labels = training_set()
        extra_texts, extra_labels = tuning_set()
        texts, labels, real = texts + extra_texts, labels + extra_labels, len(extra_texts)
        shipped = True
    threshold = 0.5
    norm = read(texts)
    if calibrated:
        # The shipped calibration is reused when it was made on exactly these texts with
        # this pipeline (it costs five more fits, a minute on a small machine).
        digest = training_digest(norm, labels)
        stored = stored_calibration() if shipped else None
        if stored is not None and stored[0] == digest:
            threshold = stored[1]
        else:
            threshold = calibrate(norm, labels, real)
    model = _pipeline().fit(norm, labels)
    return InjectionModel(model, threshold)


def training_digest(norm: list[str], labels: list[int]) -> str:
    """A digest of what the classifier reads of its training texts (`read`: normalised,
    unmasked, glossed, so a change to any of those steps makes a new calibration), the
    pipeline and the calibration target."""
    h = hashlib.sha256()
    for t, y in zip(norm, labels, strict=True):
        h.update(f"{y}\0{t}\0".encode())
    h.update(repr(sorted(_pipeline().get_params().items(), key=lambda kv: kv[0])).encode())
    h.update(f"{CALIBRATION_FPR}".encode())
    return h.hexdigest()[:16]
