"""Prompt-injection and jailbreak scoring: named heuristics plus a small text classifier.

The classifier (TF-IDF word and character n-grams, logistic regression) is trained on
`injection_data.training_set()`, generated at build time; nothing is downloaded. The score
is the larger of the classifier's probability and the strongest heuristic that fired, so
each verdict can say why. Pure: no I/O (adapters/classifier_cache.py stores the model).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from services.guardrails.injection_data import training_set

# (reason, weight, pattern) — matched against normalised text (lowercase, leetspeak undone).
_HEURISTICS: list[tuple[str, float, re.Pattern[str]]] = [
    (
        "instruction override",
        0.9,
        re.compile(
            r"\b(ignore|disregard|forget|override|bypass|abandon)\b[\w\s,]{0,30}?"
            r"\b(previous|prior|above|earlier|preceding|all|your|any|initial|original|system)\b"
            r"[\w\s]{0,20}?\b(instructions?|rules|guidelines|directions|prompts?|constraints"
            r"|polic(y|ies)|programming|restrictions|directives)\b"
        ),
    ),
    (
        "system prompt extraction",
        0.85,
        re.compile(
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
        re.compile(
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
        re.compile(
            r"(<\|im_start\|>|<\|system\|>|</?system>|\[system( override)?\]|###\s*system"
            r"|begin new instructions|new instructions:|admin command|end of user input)"
        ),
    ),
    (
        "instructions aimed at the model inside content",
        0.8,
        re.compile(
            r"\b(note|message|instruction)s? (to|for) (the )?(ai|assistant|chatbot|model|llm)"
            r"|\bif you are an? (ai|language model|llm|assistant)\b|\bai agents?:"
        ),
    ),
    (
        "refusal suppression",
        0.7,
        re.compile(
            r"\b(you (cannot|can't|must not|may not) refuse|without any (warnings|disclaimers)"
            r"|safety rules do not apply|turn off your (filters|safety))\b"
        ),
    ),
]

_LEET = str.maketrans({"1": "i", "0": "o", "3": "e", "4": "a", "@": "a", "$": "s"})


def normalise(text: str) -> str:
    """Lowercase, compatibility-folded, leetspeak undone, whitespace collapsed."""
    t = unicodedata.normalize("NFKC", text).lower().translate(_LEET)
    return re.sub(r"\s+", " ", t)


@dataclass(frozen=True)
class InjectionResult:
    score: float
    reasons: list[str]


class InjectionDetector:
    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier

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
        p = float(self.classifier.predict_proba([norm])[0][1])
        if p >= 0.5:
            reasons.append(f"classifier: {p:.2f}")
        return InjectionResult(round(max(best, p), 4), reasons)


def train_classifier(texts: list[str] | None = None, labels: list[int] | None = None) -> Any:
    """A fitted scikit-learn pipeline; takes a few seconds on the generated set."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    if texts is None or labels is None:
        texts, labels = training_set()
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
    model = Pipeline([("features", features), ("lr", LogisticRegression(C=4.0, max_iter=2000))])
    model.fit([normalise(t) for t in texts], labels)
    return model
