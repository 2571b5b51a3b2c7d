"""Secret scanning: cloud keys, private keys, JWTs, passwords in assignments, high-entropy tokens.

Pure: text in, spans out. An unterminated private key block runs to the end of the text,
so that a streaming window holds it back until it is complete.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from services.guardrails.linear import compile_linear

# (type, pattern, group holding the secret). Every pattern runs on RE2 (linear time), and
# every repetition that can meet a long run of the same characters is bounded.
_PATTERNS: list[tuple[str, Any, int]] = [
    (
        "PRIVATE_KEY",
        compile_linear(
            r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----[\s\S]*?"
            r"(?:-----END[A-Z ]{0,40}PRIVATE KEY-----|\z)"
            r"|-----BEGIN[A-Z ]{0,40}\z"
        ),
        0,
    ),
    (
        "AWS_ACCESS_KEY",
        compile_linear(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA)[0-9A-Z]{16}\b"),
        0,
    ),
    (
        "AWS_SECRET_KEY",
        compile_linear(
            r"(?i)aws.{0,24}?(?:secret|key)\w{0,24}['\"]?\s{0,8}[:=]\s{0,8}['\"]?"
            r"([A-Za-z0-9/+=]{40})"
        ),
        1,
    ),
    ("GCP_API_KEY", compile_linear(r"\bAIza[0-9A-Za-z_\-]{35}"), 0),
    (
        "GITHUB_TOKEN",
        compile_linear(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
        0,
    ),
    ("SLACK_TOKEN", compile_linear(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), 0),
    ("STRIPE_KEY", compile_linear(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"), 0),
    ("OPENAI_KEY", compile_linear(r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{20,}"), 0),
    ("AZURE_KEY", compile_linear(r"(?i)AccountKey=([A-Za-z0-9+/=]{40,})"), 1),
    (
        "JWT",
        compile_linear(r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{8,}"),
        0,
    ),
    (
        "PASSWORD",
        compile_linear(
            r"(?i)\b(?:password|passwd|pwd|passphrase|secret|api[_-]?key|access[_-]?token"
            r"|auth[_-]?token|client[_-]?secret|private[_-]?key)\b['\"]?\s{0,8}(?::|=|\bis\b)\s{0,8}"
            r"['\"]?([^\s'\",;]{4,})"
        ),
        1,
    ),
    ("PASSWORD", compile_linear(r"\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:([^\s:/@]{3,})@"), 1),
]

_TOKEN = compile_linear(r"[A-Za-z0-9+/=_\-]{20,}")
_PLACEHOLDER = compile_linear(r"<[A-Z][A-Z_]*_\d+>")


@dataclass(frozen=True)
class Span:
    type: str
    start: int
    end: int
    score: float


def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(s)
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _looks_random(tok: str, min_entropy: float) -> bool:
    classes = sum(
        (
            any(c.isdigit() for c in tok),
            any(c.islower() for c in tok),
            any(c.isupper() for c in tok),
        )
    )
    return classes >= 2 and any(c.isdigit() for c in tok) and entropy(tok) >= min_entropy


def scan(text: str, min_entropy: float = 4.0) -> list[Span]:
    """Every secret in `text`, longest first where two overlap."""
    found: list[Span] = []
    for kind, pattern, group in _PATTERNS:
        for m in pattern.finditer(text):
            start, end = m.span(group)
            if end > start:
                found.append(Span(kind, start, end, 1.0))
    for m in _TOKEN.finditer(text):
        if _looks_random(m.group(), min_entropy):
            found.append(Span("HIGH_ENTROPY_TOKEN", m.start(), m.end(), 0.8))
    return [s for s in merged(found) if not _PLACEHOLDER.fullmatch(text[s.start : s.end])]


def merged(spans: list[Span]) -> list[Span]:
    """Overlapping spans made one, in order: the first (the longest, on a tie) keeps its
    type and score and reaches as far as any of them."""
    out: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        if out and s.start < out[-1].end:
            if s.end > out[-1].end:
                out[-1] = Span(out[-1].type, out[-1].start, s.end, out[-1].score)
            continue
        out.append(s)
    return out
