"""The grounding check: which sentences of an answer no retrieved chunk supports. Pure.

Each sentence is scored against each chunk by MiniLM cosine similarity (the caller
embeds) mixed with lexical support (the share of the sentence's content words, numbers
and names included, that the chunk contains); the best chunk is its support, and below
the threshold the sentence is flagged. Lexical support is what catches a changed number
or name, which embeddings barely see. Weight and threshold were chosen on bench/rag.py's
labeled set of supported / altered / invented sentences. A sentence that says the answer
is not known is no claim, so it is never flagged; nor are sentences of under 3 words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WEIGHT = 0.3  # of the cosine; the rest is lexical support
THRESHOLD = 0.7
MIN_WORDS = 3

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_CITE = re.compile(r"\s*\[\d+(?:,\s*\d+)*\]")
_WORD = re.compile(r"[a-z0-9]+(?:[.,'-][a-z0-9]+)*")
_ABSTAIN = re.compile(
    r"\b(don't know|do not know|not (?:in|mentioned in|provided in) the context|"
    r"no information|cannot find|can't find|not sure)\b",
    re.IGNORECASE,
)
_STOP_WORDS = (
    "a an the is am are was were be been being to of in on at for and or but it its this "
    "that these those with as by from has have had do does did so such than then there "
    "their they them he she his her we our you your i me my which who whom what when "
    "where how also not no can could would should will may might"
)
_STOP = frozenset(_STOP_WORDS.split())


@dataclass(frozen=True)
class Support:
    sentence: str
    supported: bool
    chunk: int | None  # index into the chunks given, None when none supports it
    score: float


def sentences(answer: str) -> list[str]:
    """The answer's sentences, citation markers removed, too-short ones left out."""
    out = []
    for s in _SENTENCE.split(answer):
        s = _CITE.sub("", s).strip()
        if len(s.split()) >= MIN_WORDS:
            out.append(s)
    return out


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def lexical(sentence: str, chunk: str) -> float:
    words = content_words(sentence)
    return len(words & content_words(chunk)) / len(words) if words else 1.0


def judge(
    sents: Sequence[str],
    chunks: Sequence[str],
    cosine: Sequence[Sequence[float]],
    weight: float = WEIGHT,
    threshold: float = THRESHOLD,
) -> list[Support]:
    """`cosine[i][j]`: similarity of sentence i and chunk j."""
    out = []
    for i, s in enumerate(sents):
        if _ABSTAIN.search(s):
            out.append(Support(s, True, None, 1.0))
            continue
        best, best_j = 0.0, None
        for j, c in enumerate(chunks):
            score = weight * float(cosine[i][j]) + (1 - weight) * lexical(s, c)
            if score > best:
                best, best_j = score, j
        ok = best >= threshold
        out.append(Support(s, ok, best_j if ok else None, round(best, 4)))
    return out


def check_answers(
    answers: Mapping[int, str],
    chunks: Sequence[str],
    embed: Callable[[list[str]], Any],
) -> list[tuple[int, Support]]:
    """(choice, support) for every sentence of every answer. `embed` returns unit vectors
    (rows), so a dot product is the cosine; with no chunk nothing is supported."""
    per_choice = [(choice, sentences(text)) for choice, text in sorted(answers.items())]
    sents = [s for _, ss in per_choice for s in ss]
    if not sents:
        return []
    vectors = np.asarray(embed(sents + list(chunks)), dtype=np.float32)
    cosine = vectors[: len(sents)] @ vectors[len(sents) :].T
    judged = iter(judge(sents, chunks, cosine.tolist()))
    return [(choice, next(judged)) for choice, ss in per_choice for _ in ss]
