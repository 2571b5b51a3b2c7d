"""Query rewriting for retrieval: the user's last message, with the recent conversation,
turned by a small model into a standalone search query. Pure: the prompt, the output
format and the checks on what the model answers.

A follow-up ("And what is its capital?") names nothing the search can match; the model
puts back what "its" stands for. Small models wander, so what they answer is kept only
when it looks like a rewrite of the question (`parse`): one line, not much longer than
the question, its own words kept, nothing from nowhere, something from the conversation.
Otherwise a question that points back (`refers_back`) is searched with the user's
previous message in front of it, and any other question as asked (`with_last_turn`).
bench/rag.py measures each step; services/memory/README.md has the numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

MAX_TURNS = 4  # earlier turns rarely hold what a follow-up refers to
TURN_CHARS = 300  # each turn is cut: the subject is named early
MAX_QUERY_CHARS = 300
MAX_TOKENS = 48  # a query, not an answer

PROMPT = (
    "Rewrite the user's last question so that it can be understood without the "
    "conversation: replace it, its, there, they, he, she with the name they stand for. "
    "Keep the other words. Do not answer the question."
)
# Shown as earlier exchanges: a small model copies a pattern better than it follows rules.
EXAMPLES: list[tuple[str, str, str]] = [
    (
        "user: What is the population of Peru? assistant: About 34 million.",
        "And what is its currency?",
        "What is the currency of Peru?",
    ),
    (
        "user: Who leads project Falcon? assistant: Dana Smith.",
        "What is her phone number?",
        "What is the phone number of Dana Smith?",
    ),
    ("(none)", "How many vacation days do I get?", "How many vacation days do I get?"),
]

# Plain text, one line: the query. (A JSON schema gains nothing for one string and makes
# the small model's output longer.)
STOP = ["\n"]

_WORD = re.compile(r"\w+", re.UNICODE)
# Function words and the references a rewrite replaces: not what a question is about.
_STOP_WORDS = (
    "a an the is are was were be do does did what which who whom whose when where why how "
    "and or of in on at to for from by with about there it its they them their he she his "
    "her this that these those and also please tell me my i you your we our"
)
_STOP = frozenset(_STOP_WORDS.split())
_LABEL = re.compile(
    r"^\s*(standalone\s+)?(search\s+)?(query|question|rewritten( query| question)?)\s*:\s*",
    re.IGNORECASE,
)


def _turns(history: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The last turns of the conversation proper (user and assistant, not empty)."""
    said = [(r, c) for r, c in history if r in ("user", "assistant") and c.strip()]
    return said[-MAX_TURNS:]


def _ask(convo: str, query: str) -> str:
    return f"Conversation: {convo}\nLast question: {query}"


def messages_for(query: str, history: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The chat messages for the model: the instruction, the examples as earlier
    exchanges, then the conversation and the last question as one user message."""
    turns = [
        f"{role}: {' '.join(content.split())[:TURN_CHARS]}" for role, content in _turns(history)
    ]
    out = [{"role": "system", "content": PROMPT}]
    for convo, question, rewritten in EXAMPLES:
        out.append({"role": "user", "content": _ask(convo, question)})
        out.append({"role": "assistant", "content": rewritten})
    out.append(
        {"role": "user", "content": _ask(" ".join(turns) or "(none)", " ".join(query.split()))}
    )
    return out


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def _content(text: str) -> set[str]:
    """Words that carry the question's meaning, cut to a stem (plural = singular)."""
    return {w[:5] for w in _words(text) if w not in _STOP}


def parse(raw: str, query: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The rewritten query, or `query` itself when the output is unusable: empty, too
    long, a word from nowhere (neither the question nor the conversation), a different
    question (it lost more than half of the question's own words), or no rewrite at all
    (nothing brought in from the conversation)."""
    text = (raw or "").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return query
        text = str(data.get("query", "")) if isinstance(data, dict) else ""
    lines = [line for line in text.splitlines() if line.strip()]
    text = _LABEL.sub("", lines[0]).strip().strip("\"'`").strip() if lines else ""
    if not text:
        return query
    context = " ".join(content for _, content in _turns(history))
    if len(text) > min(MAX_QUERY_CHARS, 2 * len(query) + 80):
        return query
    said = _content(query) | _content(context)
    mine = _content(text)
    if not mine or mine - said:
        return query
    own = _content(query)
    if own and len(own & mine) * 2 < len(own):
        return query
    # Not a rewrite: it brings in nothing from the conversation.
    if not (mine - own) & _content(context):
        return query
    return text


_REFERS = re.compile(
    r"\b(it|its|it's|there|they|them|their|theirs|this|that|these|those|he|him|his|she|"
    r"her|hers)\b|^\s*(and|what about|how about)\b",
    re.IGNORECASE,
)


def refers_back(query: str) -> bool:
    """Whether the question points at something said before (it, its, there, "And ...")."""
    return bool(_REFERS.search(query))


def with_last_turn(query: str, history: Sequence[tuple[str, str]]) -> str:
    """The fallback when the model gives no rewrite: a question that points back, with
    the user's previous message put in front of it (that message names what it points
    at); any other question as asked."""
    last = next((c for r, c in reversed(_turns(history)) if r == "user"), "")
    if not last or not refers_back(query):
        return query
    return f"{' '.join(last.split())[:TURN_CHARS]} {query}"
