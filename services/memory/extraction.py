"""Memory extraction from a finished turn: the short prompt, its JSON schema, and the
checks on what a small model answers. Pure functions.

mem0's own extraction prompt is ≈ 8.7k tokens, longer than the small local model's
context; this one is a few lines, the output is constrained by a JSON schema, and any
extracted fact whose words the user did not say is dropped (small models invent). When
the model yields nothing usable, first-person statements of the user are kept as they
are, so a stated fact is never lost.
"""

from __future__ import annotations

import json
import re
from typing import Any

TYPES = ("user", "feedback", "project", "reference")

PROMPT = (
    "You extract facts worth remembering from what the user said. Types: "
    "user = about the user (name, role, preferences); feedback = how the user wants "
    "answers; project = their work, goals, deadlines; reference = where to find things. "
    'Only facts the user stated. Answer JSON: {"memories": [{"type": "...", "text": "..."}]}'
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "memories": {
            "type": "array",
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": list(TYPES)},
                    "text": {"type": "string"},
                },
                "required": ["type", "text"],
            },
        }
    },
    "required": ["memories"],
}

RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "memories", "schema": SCHEMA}}

_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "am",
        "are",
        "was",
        "were",
        "be",
        "to",
        "of",
        "in",
        "on",
        "at",
        "for",
        "and",
        "or",
        "my",
        "i",
        "me",
        "we",
        "our",
        "you",
        "your",
        "it",
        "that",
        "this",
        "with",
        "as",
        "by",
        "from",
        "user",
        "user's",
        "likes",
        "like",
    ]
)
_FIRST_PERSON = re.compile(
    r"\b(i am|i'm|i work|i live|i prefer|i like|i love|i use|i need|i want|my|call me|"
    r"remember|we use|our)\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def messages_for(user_texts: list[str]) -> list[dict[str, str]]:
    said = "\n".join(f"- {t}" for t in user_texts if t.strip())
    return [
        {"role": "system", "content": PROMPT},
        {"role": "user", "content": f"The user said:\n{said}"},
    ]


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def grounded(fact: str, said: str, min_share: float = 0.6) -> bool:
    words = _words(fact)
    return bool(words) and len(words & _words(said)) / len(words) >= min_share


def classify(text: str) -> str:
    low = text.lower()
    if re.search(r"\b(answer|reply|respond|format|shorter|longer|bullet|tone)\b", low):
        return "feedback"
    if re.search(r"\b(https?://|wiki|docs?|documentation|repo|dashboard|ticket)\b", low):
        return "reference"
    if re.search(r"\b(project|deadline|working on|launch|release|migrat|sprint)\b", low):
        return "project"
    return "user"


def fallback(user_texts: list[str]) -> list[tuple[str, str]]:
    out = []
    for text in user_texts:
        for sentence in _SENTENCE.split(text):
            sentence = sentence.strip()
            if sentence and not sentence.endswith("?") and _FIRST_PERSON.search(sentence):
                out.append((classify(sentence), sentence))
    return out[:5]


def parse(raw: str, user_texts: list[str]) -> list[tuple[str, str]]:
    """(type, text) facts from the model's answer, grounded in what the user said."""
    said = " ".join(user_texts)
    facts: list[tuple[str, str]] = []
    try:
        data = json.loads(raw)
        items = data.get("memories", []) if isinstance(data, dict) else []
    except (ValueError, AttributeError):
        items = []
    for item in items:
        if not isinstance(item, dict):
            continue
        text = str(item.get("text", "")).strip()
        kind = str(item.get("type", "user"))
        if text and grounded(text, said):
            facts.append((kind if kind in TYPES else classify(text), text))
    return facts or fallback(user_texts)
