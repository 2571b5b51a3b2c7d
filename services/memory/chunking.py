"""Chunking of parsed documents and near-duplicate detection: pure functions.

Chunks follow paragraph and sentence boundaries up to a word budget, with a small
overlap, and keep their page. Near-duplicates (boilerplate repeated across pages or
files) are found by word-shingle Jaccard similarity, cheap and independent of the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHUNK_WORDS = 120
OVERLAP_WORDS = 20
NEAR_DUP_JACCARD = 0.9

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Chunk:
    index: int
    text: str
    page: int | None


def _units(text: str) -> list[str]:
    """Paragraphs, split further into sentences when a paragraph is too long."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para.split()) <= CHUNK_WORDS:
            out.append(para)
        else:
            out.extend(s for s in _SENTENCE.split(para) if s)
    return out


def chunk_pages(
    pages: list[tuple[int | None, str]],
    max_words: int = CHUNK_WORDS,
    overlap: int = OVERLAP_WORDS,
) -> list[Chunk]:
    chunks: list[Chunk] = []
    for page, text in pages:
        current: list[str] = []
        for unit in _units(text):
            words = unit.split()
            while len(words) > max_words:  # one very long sentence
                if current:
                    chunks.append(Chunk(len(chunks), " ".join(current), page))
                    current = current[-overlap:] if overlap else []
                chunks.append(Chunk(len(chunks), " ".join(words[:max_words]), page))
                words = words[max_words - overlap :]
            if current and len(current) + len(words) > max_words:
                chunks.append(Chunk(len(chunks), " ".join(current), page))
                current = current[-overlap:] if overlap else []
            current.extend(words)
        if current:
            chunks.append(Chunk(len(chunks), " ".join(current), page))
    return chunks


def shingles(text: str, n: int = 3) -> frozenset[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < n:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def drop_near_duplicates(texts: list[str], threshold: float = NEAR_DUP_JACCARD) -> list[int]:
    """Indexes of the texts to keep: the first of each group of near-duplicates."""
    kept: list[int] = []
    seen: list[frozenset[str]] = []
    for i, text in enumerate(texts):
        sh = shingles(text)
        if any(jaccard(sh, s) >= threshold for s in seen):
            continue
        kept.append(i)
        seen.append(sh)
    return kept


def approx_tokens(text: str) -> int:
    # ≈ 0.75 words per token for English with BPE tokenizers.
    return max(1, int(len(text.split()) * 4 / 3))
