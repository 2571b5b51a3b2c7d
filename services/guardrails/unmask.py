"""What an injection hides from a reader of its characters, made plain before it is scored.

Attackers hide an instruction from filters in ways a model still reads: invisible format
characters inside words ("ig\u200bnore"), letters of another script that look Latin
("\u0456gnore" with a Cyrillic i), letters spaced out ("i g n o r e  a l l"), and payloads
encoded in base64 or hex for the model to decode. `unmask` undoes each, so that the
heuristics and the classifier see the words: the invisible characters are dropped, a word
that mixes Latin with look-alike letters is read in Latin, spaced letters are joined, and
the text of an encoded payload that decodes to readable text is added after the text.
Every pattern runs in linear time (RE2), and at most MAX_DECODED characters are added.
Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii

from services.guardrails.linear import compile_linear

# Unicode's format characters: zero-width spaces and joiners, bidirectional controls, the
# soft hyphen, the word joiner, tag characters.
_FORMAT = compile_linear(r"\p{Cf}+")
# Cyrillic and Greek letters that look like Latin ones, read in Latin inside a word that
# also holds Latin letters (a Russian word is left as it is).
_LOOKALIKE = str.maketrans(
    "аеорсухіјѕԁԛԝАВЕКМНОРСТХІЈЅαοκνρτυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
    "aeopcyxijsdqwABEKMHOPCTXIJSaoknptuxABEZHIKMNOPTYX",
)
_MIXED = compile_linear(
    r"[\pL]*(?:\p{Latin}[\pL]*[\p{Cyrillic}\p{Greek}]|[\p{Cyrillic}\p{Greek}][\pL]*\p{Latin})"
    r"[\pL]*"
)
# Three or more single letters, each after one space: "i g n o r e".
_SPACED = compile_linear(r"(?:^|[^\pL])((?:\pL ){2,}\pL)(?:[^\pL]|$)")
# Payloads: base64 of at least 16 characters, hex of at least 16 digits (an even number).
_BASE64 = compile_linear(r"[A-Za-z0-9+/]{16,}={0,2}")
_HEX = compile_linear(r"\b(?:[0-9a-fA-F]{2}){8,}\b")
# At most this much decoded text is added to a text, and a payload is decoded from at most
# its first MAX_ENCODED characters (a multiple of 4 and of 2).
MAX_DECODED = 2000
MAX_ENCODED = 8192
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


def _readable(raw: bytes) -> str | None:
    """The decoded bytes as text when they read as text: printable ASCII (or UTF-8 letters),
    with letters and at least one space; else None (an image, a key, a hash)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text or " " not in text.strip():
        return None
    if sum(1 for c in text if ord(c) in _PRINTABLE or c.isalpha()) < 0.95 * len(text):
        return None
    return text if sum(c.isalpha() for c in text) >= 0.5 * len(text) else None


def _from_base64(token: str) -> bytes | None:
    try:
        return base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


# Each payload's pattern and how it decodes (None: not that encoding after all).
_PAYLOADS = ((_BASE64, _from_base64), (_HEX, bytes.fromhex))


def _decoded(text: str) -> list[str]:
    found: list[str] = []
    budget = MAX_DECODED
    for pattern, decode in _PAYLOADS:
        for m in pattern.finditer(text):
            if budget <= 0:
                return found
            raw = decode(m.group()[:MAX_ENCODED])
            plain = _readable(raw) if raw is not None else None
            if plain:
                found.append(plain[:budget])
                budget -= len(plain)
    return found


def unmask(text: str) -> str:
    """The text with its hidden words made plain (see the module's docstring)."""
    text = _FORMAT.sub("", text)
    # A search first: most texts hold neither, and it costs less than a substitution.
    if _MIXED.search(text):
        text = _MIXED.sub(lambda m: m.group().translate(_LOOKALIKE), text)
    if _SPACED.search(text):
        text = _SPACED.sub(lambda m: m.group().replace(m.group(1), m.group(1)[::2]), text)
    decoded = _decoded(text)
    return text + "\n" + "\n".join(decoded) if decoded else text
