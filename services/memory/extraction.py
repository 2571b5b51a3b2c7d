"""Memory extraction from a finished turn: the short prompt, its JSON schema, and the
checks on what a small model answers. Pure functions.

mem0's own extraction prompt is ≈ 8.7k tokens, longer than the small local model's
context; this one is a few lines and one worked example, the output is constrained by a
JSON schema (at most 3 facts of at most 80 characters: the bound also stops a small
model's run-on text), and a model fact is kept only when the user stated every one of its
words (small models invent, answer questions, and copy the example). The user's own
statements come first (`fallback`: clause by clause, questions and one-off requests
left out, typed by `classify`); the model adds what they miss. bench.extraction measures
all of it on a labeled set.
"""

from __future__ import annotations

import json
import re
from typing import Any

TYPES = ("user", "feedback", "project", "reference")

PROMPT = (
    "Extract the facts worth remembering from what the user said, each a short phrase in "
    "the user's words. Types: user = about the user (name, job, home, likes); feedback = "
    "how the user wants answers; project = their work, goals, deadlines; reference = where "
    "to find things (links, tools). A question or a greeting holds no fact: answer an "
    'empty list. Answer JSON: {"memories": [{"type": "...", "text": "..."}]}'
)

# One worked example (few-shot): three facts of three types, then a question with none.
EXAMPLE: list[dict[str, str]] = [
    {
        "role": "user",
        "content": "The user said:\n- I'm Ana, a nurse in Porto. Keep answers brief. "
        "Our specs are in Notion.",
    },
    {
        "role": "assistant",
        "content": '{"memories": [{"type": "user", "text": "Ana, a nurse in Porto"}, '
        '{"type": "feedback", "text": "Keep answers brief"}, '
        '{"type": "reference", "text": "specs are in Notion"}]}',
    },
    {"role": "user", "content": "The user said:\n- How do I boil an egg?"},
    {"role": "assistant", "content": '{"memories": []}'},
]

MAX_FACTS = 3
MAX_FALLBACK = 5
MAX_CHARS = 80  # a fact is a phrase; the bound also stops a small model's run-on text
MIN_SHARE = 1.0  # share of a model fact's words the user must have said (0.6 let copies in)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "memories": {
            "type": "array",
            "maxItems": MAX_FACTS,
            "items": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": list(TYPES)},
                    "text": {"type": "string", "maxLength": MAX_CHARS},
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
# What makes a clause worth remembering when the model gives nothing usable.
_FIRST_PERSON = re.compile(
    r"\b(i am|i'm|i work|i live|i prefer|i like|i love|i hate|i use|i need|i want|i have|"
    r"i lead|i run|i manage|i speak|i'm learning|my|mine|call me|calls me|remember|"
    r"we use|we track|we're|we are|our)\b",
    re.IGNORECASE,
)
_ABOUT_USER = re.compile(r"\b(this account belongs to|the user is|i go by)\b", re.IGNORECASE)
_IDENTITY = re.compile(
    r"\bmy ([\w-]+ )?(name|handle|username|email|e-mail|nickname)\b", re.IGNORECASE
)
_FEEDBACK = re.compile(
    r"\b(answers?|repl(y|ies)|respon(d|ses?)|explanations?|format|tone|bullet|emojis?|"
    r"jargon|apologi[sz]\w*|cite|citations?|introductions?|from now on|when i ask|"
    r"shorter|longer|concise|brief)\b",
    re.IGNORECASE,
)
_IMPERATIVE = re.compile(
    r"^(please\s+)?(keep|use|don't|do not|never|always|stop|answer|reply|respond|write|avoid|"
    r"skip|give|be|explain|cite|include|add|show|format|make|talk|speak)\b",
    re.IGNORECASE,
)
_REFERENCE = re.compile(
    r"(https?://|\b[\w-]+\.(com|org|net|io|dev|internal)\b|\w/\w|\b(wiki|docs?|documentation|"
    r"confluence|jira|notion|figma|looker|grafana|vault|drive|folder|repo|repository|github|"
    r"gitlab|dashboards?|runbooks?|handbook|sharepoint|tracker)\b)",
    re.IGNORECASE,
)
_PROJECT = re.compile(
    r"\b(project|deadline|due|working on|launch\w*|release\w*|migrat\w*|sprint|milestone|"
    r"goal|scheduled|planned|preparing|building|rebuilding|contract|beta|roadmap|quarterly)\b",
    re.IGNORECASE,
)
_QUESTION_START = re.compile(
    r"^(what|what's|who|whom|whose|where|when|why|how|which|is|are|can|could|would|do|does|"
    r"did|should|will|shall)\b",
    re.IGNORECASE,
)
# A standing instruction, or a question asking for another kind of answer.
_STANDING = re.compile(r"\b(from now on|when i ask|whenever i|in (all )?your)\b", re.IGNORECASE)
_ASKS_STYLE = re.compile(
    r"^(could|can|would|will) you\b.*\b(more|less|shorter|longer|simpler)\b", re.IGNORECASE
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# Clauses: a sentence of several facts ("I live in Lyon and I'm vegetarian") gives each.
_CLAUSE = re.compile(
    r";\s+|,\s+(?:and|so|but|though|although|while)\s+|:\s+|"
    r"\s+(?:and|but)\s+(?=(?:i|i'm|my|our|we|we're)\b)",
    re.IGNORECASE,
)
_AS_A = re.compile(r"^as an? ([\w-]+(?: [\w-]+)?),\s+(.+)$", re.IGNORECASE)
_PRONOUN_START = re.compile(r"^(i|i'm|my|we|we're|our)\b", re.IGNORECASE)


def messages_for(user_texts: list[str]) -> list[dict[str, str]]:
    said = "\n".join(f"- {t}" for t in user_texts if t.strip())
    return [
        {"role": "system", "content": PROMPT},
        *EXAMPLE,
        {"role": "user", "content": f"The user said:\n{said}"},
    ]


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def grounded(fact: str, said: str, min_share: float = MIN_SHARE) -> bool:
    words = _words(fact)
    return bool(words) and len(words & _words(said)) / len(words) >= min_share


def classify(text: str) -> str:
    if _IDENTITY.search(text):
        return "user"
    if _FEEDBACK.search(text):
        return "feedback"
    if _REFERENCE.search(text):
        return "reference"
    if _PROJECT.search(text):
        return "project"
    return "user"


def clauses(text: str) -> list[str]:
    """The text's sentences, cut into clauses at conjunctions and semicolons."""
    out = []
    for sentence in _SENTENCE.split(text):
        sentence = sentence.strip()
        parts = [p.strip(" ,;") for p in _CLAUSE.split(sentence) if p and p.strip(" ,;")]
        for n, part in enumerate(parts):
            # A question mark ends the last clause only; the whole sentence asks.
            if sentence.endswith("?") and n == len(parts) - 1 and not part.endswith("?"):
                part += "?"
            out.append(part)
    return out


def is_question(clause: str) -> bool:
    # "When I ask for code, write it in Python": a condition, not a question.
    return clause.endswith("?") or bool(_QUESTION_START.match(clause) and "," not in clause)


def statements(user_texts: list[str]) -> list[str]:
    """What the user stated (not asked): clauses that are not questions."""
    return [c for t in user_texts for c in clauses(t) if not is_question(c)]


def _fact_of(clause: str, sentence_wants: bool) -> tuple[str, str] | None:
    text = clause.rstrip(".!").strip()
    if len(_words(text)) < 1:
        return None
    if (_STANDING.search(text) and _FEEDBACK.search(text)) or _IMPERATIVE.match(text):
        # An instruction is a memory when it is about answers, not a one-off request.
        return ("feedback", text) if _FEEDBACK.search(text) or sentence_wants else None
    if _FIRST_PERSON.search(text) or _ABOUT_USER.search(text):
        return (classify(text), text)
    if _REFERENCE.search(text) or _PROJECT.search(text):
        return (classify(text), text)
    return None


def fallback(user_texts: list[str]) -> list[tuple[str, str]]:
    """Facts from the user's own statements, clause by clause, typed by `classify`."""
    out: list[tuple[str, str]] = []
    for text in user_texts:
        for sentence in _SENTENCE.split(text):
            parts = clauses(sentence)
            wants = any(_IMPERATIVE.match(p) and _FEEDBACK.search(p) for p in parts)
            for clause in parts:
                if is_question(clause):
                    if _ASKS_STYLE.match(clause) and _FEEDBACK.search(clause):
                        out.append(("feedback", clause.rstrip("?")))
                    continue
                role = _AS_A.match(clause)
                if role:
                    out.append(("user", f"I am a {role.group(1)}"))
                    clause = role.group(2)
                fact = _fact_of(clause, wants)
                if fact:
                    out.append(fact)
    return out[:MAX_FALLBACK]


def from_model(raw: str, user_texts: list[str]) -> list[tuple[str, str]]:
    """(type, text) facts from the model's answer, kept when grounded in what the user
    stated (a question states nothing, so nothing is kept from one)."""
    said = " ".join(statements(user_texts))
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
        if text and grounded(text, said) and text not in {t for _, t in facts}:
            facts.append((kind if kind in TYPES else classify(text), text))
    return facts[:MAX_FACTS]


def _covers(fact: str, other: str) -> bool:
    words = _words(fact)
    return not words or len(words & _words(other)) / len(words) >= 0.6


def parse(raw: str, user_texts: list[str]) -> list[tuple[str, str]]:
    """(type, text) facts: the user's own statements (`fallback`), then what the model
    found besides them. Measured by bench.extraction: the model first lost F1 there."""
    facts = fallback(user_texts)
    for kind, text in from_model(raw, user_texts):
        if not any(_covers(text, other) for _, other in facts):
            facts.append((kind, text))
    return facts[:MAX_FALLBACK]


def new_facts(facts: list[tuple[str, str]], stored: list[str]) -> list[tuple[str, str]]:
    """The facts not already remembered: the same content words, whatever their case,
    punctuation or order, are the same fact (a user who says it again keeps one memory)."""
    seen = {frozenset(_words(text)) for text in stored}
    out = []
    for kind, text in facts:
        key = frozenset(_words(text))
        if key and key not in seen:
            seen.add(key)
            out.append((kind, text))
    return out
