"""The sliding window of the output guardrail: what of a streamed answer may reach the client.

The agent runtime keeps, per choice, the text not yet released, asks guardrails.output
about it (with the last `CONTEXT_CHARS` released characters before it) and releases only a
prefix of it. What is held back is only what could still become part of a span that the
full check would rewrite (`held_from`): the word still being written, and the run of words
before it that a later word could still join to a span (capitalised words that are no
everyday sentence word, name particles, numbers, anything with digits or symbols:
"Jiry Holtman", "+44 20 7946", "ada@example."). The released prefix always ends with an
everyday lower-case word (or a capitalised sentence word such as "The", "Hello") and the
whitespace after it, and it was checked together with that word; no span the check found
may straddle the cut (it leaves whole after a later check, or replaced, or not at all).

When to check: at once when a choice's first releasable prefix appears (so the time to
first token pays one check and the first complete word, not a whole window), then once per
`STRIDE_CHARS` new characters, and at the end of the choice.

Bounded delay: a run of words that could join a span is held at most `HOLD_CHARS` behind
the newest text (the previous rule, which still applies as a floor: every character is
checked with at least `HOLD_CHARS` characters after it before a non-everyday tail is
released), plus `STRIDE_CHARS` until the next check, plus the rest of the current word
(a single run without whitespace is force-released past `MAX_RUN` characters), or the end
of the choice, whichever comes first. Text without spaces between words (Chinese,
Japanese) is therefore released at that bound, not word by word.

JSON answers (`structure == "json"`: json_object / json_schema response formats) are held
whole until the choice ends and then checked as one document, rewritten only inside
string values by the guardrail (services/guardrails/structured.py), so the client gets a
document that parses; tool-call arguments are always checked that way, one call at a time.
Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from libs.events import Delta, GenerationParams, GuardrailEntity, ToolCallDelta

HOLD_CHARS = 64
STRIDE_CHARS = 32
MAX_RUN = 512
# Already released text sent along with each check, so that detections that depend on
# what precedes a value ("password = ...", "born on ...") still see it.
CONTEXT_CHARS = 64

PSEUDONYM = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")

Structure = Literal["text", "json"]

# Lower-case words that join the capitalised words of a name ("Ludwig van Beethoven").
PARTICLES = frozenset({
    "van", "von", "de", "der", "den", "da", "di", "del", "della", "la", "le", "du", "dos",
    "das", "ter", "ten", "zu", "bin", "ibn", "al", "el", "y", "st", "mac", "mc",
})  # fmt: skip
# Capitalised words that start sentences and are neither given names nor surnames: such a
# word cannot become part of a person's name, so it need not wait for the next one.
# (Words that are also names, "Will", "May", "Grace", "Hope", "Mark", are left out.)
SENTENCE_WORDS = frozenset({
    "a", "about", "above", "after", "again", "all", "also", "although", "an", "and", "another",
    "any", "are", "as", "at", "be", "because", "before", "below", "besides", "both", "but",
    "by", "can", "could", "did", "do", "does", "each", "either", "even", "every", "first",
    "for", "from", "further", "good", "great", "had", "has", "have", "he", "hello", "her",
    "here", "hey", "hi", "his", "how", "however", "i", "i'd", "i'll", "i'm", "i've", "if",
    "in", "indeed", "instead", "is", "it", "it's", "its", "let", "let's", "many", "maybe",
    "more", "moreover", "most", "my", "next", "no", "nor", "not", "note", "now", "of", "ok",
    "okay", "on", "once", "one", "only", "or", "other", "our", "overall", "perhaps", "please",
    "since", "so", "some", "sorry", "still", "such", "sure", "thank", "thanks", "that",
    "that's", "the", "their", "then", "there", "there's", "these", "they", "this", "those",
    "though", "thus", "to", "today", "too", "two", "unlike", "until", "upon", "we", "well",
    "what", "what's", "when", "where", "whether", "which", "while", "who", "why", "with",
    "within", "without", "would", "yes", "yet", "you", "you're", "your",
})  # fmt: skip
_APOSTROPHE = "\u2019"
_OPEN = "([{\"'\u201c\u2018\u00ab\u00bf\u00a1"
_CLOSE = ".,;:!?)]}\"'\u201d\u2019\u00bb\u2026"


def structure_of(params: GenerationParams) -> Structure:
    """ "json" when the request asks for a JSON document (json_object / json_schema)."""
    kind = (params.response_format or {}).get("type")
    return "json" if kind in ("json_object", "json_schema") else "text"


def everyday(word: str) -> bool:
    """Whether a whole word (between whitespace) could not be part of a span that grows
    to the right: a lower-case word that is no name particle, or a capitalised sentence
    word. Digits, symbols (@ / + = _ < > # ...), capitalised names, acronyms and
    scripts without case are not everyday words: they wait for the next one."""
    core = word.lstrip(_OPEN).rstrip(_CLOSE)
    if not core:
        return False
    for i, ch in enumerate(core):
        if ch.isalpha():
            continue
        # An apostrophe or a hyphen between letters ("don't", "well-known").
        if ch in "'-" + _APOSTROPHE and 0 < i < len(core) - 1 and core[i + 1].isalpha():
            continue
        return False
    if core.islower():
        return core not in PARTICLES
    capitalised = core[:1].isupper() and (len(core) == 1 or core[1:].islower())
    return capitalised and core.replace(_APOSTROPHE, "'").lower() in SENTENCE_WORDS


def held_from(text: str, final: bool = False) -> int:
    """Where the tail that could still become part of a span begins: the word still being
    written and the words before it back to the last everyday word. `len(text)` when
    nothing needs holding (the end of the choice)."""
    if final:
        return len(text)
    end = len(text)
    if end and not text[-1].isspace():  # the last word is still being written
        end = _word_start(text, end)
    pos = end
    while pos > 0:
        stop = pos
        while stop > 0 and text[stop - 1].isspace():
            stop -= 1
        if stop == 0:
            return pos
        start = _word_start(text, stop)
        if everyday(text[start:stop]):
            return pos  # released up to here: the everyday word and the space after it
        pos = start
    return 0


def _word_start(text: str, end: int) -> int:
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return start


def release_boundary(
    text: str, spans: list[GuardrailEntity], final: bool, hold: int = HOLD_CHARS
) -> int:
    """How many characters of `text` (checked, with `spans` found in it) may leave now."""
    if final:
        return len(text)
    cut = max(held_from(text), _behind(text, hold))
    # No span may straddle the cut: it leaves whole, after a later check, or not at all.
    moved = True
    while moved:
        moved = False
        for s in spans:
            if s.start < cut < s.end:
                cut = s.start
                moved = True
    return max(cut, 0)


def _behind(text: str, hold: int) -> int:
    """The floor: everything `hold` characters behind the newest text, cut back to a
    whitespace (a run without one is cut only past MAX_RUN)."""
    cut = len(text) - hold
    if cut <= 0:
        return 0
    ws = max(text.rfind(c, 0, cut) for c in " \n\t\r")
    if ws >= 0:
        return ws + 1
    return cut if len(text) > MAX_RUN else 0


def apply_spans(text: str, spans: list[GuardrailEntity], upto: int) -> str:
    """`text[:upto]` with every span inside it replaced."""
    out: list[str] = []
    pos = 0
    for s in sorted(spans, key=lambda s: s.start):
        if s.end > upto or s.start < pos:
            continue
        out.append(text[pos : s.start] + s.replacement)
        pos = s.end
    out.append(text[pos:upto])
    return "".join(out)


def restore(text: str, pseudonyms: dict[str, str], in_json: bool = False) -> str:
    """Put the request's real values back in place of the placeholders the model saw
    (`in_json`: inside a JSON document's strings, so each value is escaped as one)."""
    if not pseudonyms:
        return text

    def value(m: re.Match[str]) -> str:
        real = pseudonyms.get(m.group())
        if real is None:
            return m.group()
        return json.dumps(real, ensure_ascii=False)[1:-1] if in_json else real

    return PSEUDONYM.sub(value, text)


def pseudonymize(text: str, pseudonyms: dict[str, str]) -> str:
    """`restore` undone: the request's real values replaced by their placeholders again
    (longest first), for what is kept beyond the turn, such as the conversation buffer,
    whose copy of the input holds the placeholders too."""
    for placeholder, value in sorted(pseudonyms.items(), key=lambda kv: -len(kv[1])):
        if value:
            text = text.replace(value, placeholder)
    return text


@dataclass
class _Choice:
    context: str = ""
    text: str = ""
    unchecked: int = 0
    finish: str | None = None
    blocked: bool = False
    checks: int = 0  # windows of this choice checked so far
    # (offset just past the token in `text`, its logprob entries)
    logprobs: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    # Tool call pieces: held to the end of the choice; each call's arguments are checked
    # as one JSON document, and the calls leave with the choice's last delta.
    calls: list[ToolCallDelta] = field(default_factory=list)
    # The digest of the adapter that produces the choice (on its first delta), and whether
    # a released delta carried it on (the client's `system_fingerprint` comes from it).
    adapter: str | None = None
    adapter_sent: bool = False

    def adapter_once(self) -> str | None:
        if self.adapter is None or self.adapter_sent:
            return None
        self.adapter_sent = True
        return self.adapter


class OutputWindow:
    """Per-choice windows of one turn."""

    def __init__(
        self,
        pseudonyms: dict[str, str] | None = None,
        stride: int = STRIDE_CHARS,
        structure: Structure = "text",
    ) -> None:
        self.pseudonyms = pseudonyms or {}
        self.stride = stride
        self.structure = structure
        self.choices: dict[int, _Choice] = {}

    def add(self, deltas: list[Delta]) -> list[int]:
        """Take new deltas; return the choices whose window should be checked now."""
        ready: list[int] = []
        for d in deltas:
            c = self.choices.setdefault(d.index, _Choice())
            if d.adapter_digest and c.adapter is None:
                c.adapter = d.adapter_digest
            if c.blocked:
                continue
            c.text += d.content
            c.unchecked += len(d.content)
            if d.logprobs:
                c.logprobs.append((len(c.text), d.logprobs))
            if d.tool_calls:
                c.calls.extend(d.tool_calls)
            if d.finish_reason:
                c.finish = d.finish_reason
            due = c.finish is not None
            if not due and self.structure == "text" and c.unchecked:
                # The first words go out as soon as they can; then one check per stride.
                due = c.unchecked >= self.stride or (
                    c.checks == 0 and d.content != "" and held_from(c.text) > 0
                )
            if due and d.index not in ready:
                ready.append(d.index)
        return ready

    def pending(self) -> list[int]:
        """Choices with text or a finish not yet released (checked at the end of the turn)."""
        return [i for i, c in self.choices.items() if not c.blocked and (c.text or c.finish)]

    def unreleased(self, index: int) -> str:
        return self.choices[index].text

    def text(self, index: int) -> str:
        """What to check: the released context, then the unreleased text."""
        c = self.choices[index]
        return c.context + c.text

    def structure_of(self, index: int) -> Structure:
        """How the guardrail is to read `text(index)`: a JSON answer is one document once
        its choice has ended; one cut by the token limit no longer parses and is screened
        as text (it leaves with finish_reason `length`, rewritten as prose)."""
        c = self.choices[index]
        if self.structure == "json" and c.finish is not None and c.finish != "length":
            return "json"
        return "text"

    def calls(self, index: int) -> dict[int, str]:
        """Once the choice has ended: each tool call's whole arguments (by call index), to
        be checked as a JSON document."""
        c = self.choices[index]
        if c.finish is None:
            return {}
        out: dict[int, str] = {}
        for p in c.calls:
            out[p.index] = out.get(p.index, "") + p.arguments
        return {i: a for i, a in out.items() if a}

    def release(
        self,
        index: int,
        checked: list[GuardrailEntity],
        final: bool,
        document: str | None = None,
        arguments: dict[int, str] | None = None,
    ) -> Delta | None:
        """After a passing check of `text(index)`: the delta that may leave now, if any.
        `document`: the guardrail's rewrite of a whole JSON answer (in place of `checked`
        spans); `arguments`: each call's arguments as the guardrail rewrote them."""
        c = self.choices[index]
        final = final or c.finish is not None
        c.unchecked = 0
        c.checks += 1
        if document is not None and final:
            cut = len(c.text)
            content = restore(document, self.pseudonyms, in_json=True)
            touched = document != c.text
        else:
            shift = len(c.context)
            # Spans in the unreleased text's coordinates; one reaching back into the
            # context is clipped (what of it was released had passed an earlier check).
            spans = [
                s.model_copy(update={"start": max(s.start - shift, 0), "end": s.end - shift})
                for s in checked
                if s.end > shift
            ]
            cut = release_boundary(c.text, spans, final)
            if cut == 0 and not (final and c.finish):
                return None
            content = restore(apply_spans(c.text, spans, cut), self.pseudonyms)
            touched = any(s.start < cut for s in spans)
        lps = [e for off, entries in c.logprobs if off <= cut for e in entries]
        c.logprobs = [(off - cut, e) for off, e in c.logprobs if off > cut]
        c.context = (c.context + c.text[:cut])[-CONTEXT_CHARS:]
        c.text = c.text[cut:]
        finish = c.finish if final else None
        calls: list[ToolCallDelta] = []
        if final:
            c.finish = None
            calls = self._release_calls(c.calls, arguments or {})
            c.calls = []
        # Logprobs name the raw tokens: none leave for a stretch the guardrail rewrote.
        return Delta(
            index=index,
            content=content,
            logprobs=(lps or None) if not touched else None,
            finish_reason=finish,
            tool_calls=calls or None,
            adapter_digest=c.adapter_once(),
        )

    def _release_calls(
        self, pieces: list[ToolCallDelta], arguments: dict[int, str]
    ) -> list[ToolCallDelta]:
        """One piece per call (its id, name and whole arguments), the arguments as the
        guardrail rewrote them, with the request's pseudonyms restored."""
        calls: dict[int, ToolCallDelta] = {}
        for p in pieces:
            had = calls.get(p.index)
            if had is None:
                calls[p.index] = p.model_copy()
            else:
                calls[p.index] = had.model_copy(
                    update={
                        "id": had.id or p.id,
                        "name": had.name or p.name,
                        "arguments": had.arguments + p.arguments,
                    }
                )
        out: list[ToolCallDelta] = []
        for i, call in sorted(calls.items()):
            args = arguments.get(i, call.arguments)
            out.append(
                call.model_copy(update={"arguments": restore(args, self.pseudonyms, in_json=True)})
            )
        return out

    def block(self, index: int, notice: str) -> Delta:
        """The choice ends here: nothing of its unreleased text leaves."""
        c = self.choices[index]
        c.blocked = True
        c.text = ""
        c.calls = []
        c.logprobs = []
        return Delta(
            index=index,
            content=notice,
            finish_reason="content_filter",
            adapter_digest=c.adapter_once(),
        )
