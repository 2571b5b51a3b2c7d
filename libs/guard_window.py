"""The sliding window of the output guardrail: what of a streamed answer may reach the client.

The agent runtime keeps, per choice, the text not yet released. Once `STRIDE_CHARS` new
characters have arrived (or the choice ends) it asks guardrails.output about the whole
unreleased text and releases only a prefix of it: everything except the last
`HOLD_CHARS` characters, cut back to a whitespace and to the start of any span the
guardrail found that reaches past the cut. So every character is checked together with at
least the `HOLD_CHARS` characters that follow it (any secret or PII value of up to that
length is seen whole before any of it leaves), and a word still being written is never cut.

Bounded delay: a token reaches the client at most HOLD_CHARS + STRIDE_CHARS = 96
characters after it was generated (about 24 tokens of English at ~4 characters per token;
96 tokens in the worst case of one character per token), plus the rest of the word it
is in (a single run without whitespace is force-released past MAX_RUN characters), or at
the end of the choice, whichever comes first. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from libs.events import Delta, GuardrailEntity, ToolCallDelta

HOLD_CHARS = 64
STRIDE_CHARS = 32
MAX_RUN = 512
# Already released text sent along with each check, so that detections that depend on
# what precedes a value ("password = ...", "born on ...") still see it.
CONTEXT_CHARS = 64

PSEUDONYM = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")


def release_boundary(
    text: str, spans: list[GuardrailEntity], final: bool, hold: int = HOLD_CHARS
) -> int:
    """How many characters of `text` (checked, with `spans` found in it) may leave now."""
    if final:
        return len(text)
    cut = len(text) - hold
    if cut <= 0:
        return 0
    # Back to just after a whitespace, so that no word is split.
    ws = max(text.rfind(c, 0, cut) for c in " \n\t\r")
    if ws >= 0:
        cut = ws + 1
    elif len(text) <= MAX_RUN:
        return 0
    # No span may straddle the cut: it leaves whole, after a later check, or not at all.
    moved = True
    while moved:
        moved = False
        for s in spans:
            if s.start < cut < s.end:
                cut = s.start
                moved = True
    return max(cut, 0)


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


def restore(text: str, pseudonyms: dict[str, str]) -> str:
    """Put the request's real values back in place of the placeholders the model saw."""
    if not pseudonyms:
        return text
    return PSEUDONYM.sub(lambda m: pseudonyms.get(m.group(), m.group()), text)


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
    # (offset just past the token in `text`, its logprob entries)
    logprobs: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    # Tool call pieces: held to the end of the choice, checked with its last window (their
    # arguments after the text), released with its last delta.
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

    def calls_text(self) -> str:
        if not self.calls or self.finish is None:
            return ""
        return "".join("\n" + p.arguments for p in self.calls if p.arguments)


class OutputWindow:
    """Per-choice windows of one turn."""

    def __init__(
        self, pseudonyms: dict[str, str] | None = None, stride: int = STRIDE_CHARS
    ) -> None:
        self.pseudonyms = pseudonyms or {}
        self.stride = stride
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
            if (c.unchecked >= self.stride or c.finish) and d.index not in ready:
                ready.append(d.index)
        return ready

    def pending(self) -> list[int]:
        """Choices with text or a finish not yet released (checked at the end of the turn)."""
        return [i for i, c in self.choices.items() if not c.blocked and (c.text or c.finish)]

    def unreleased(self, index: int) -> str:
        c = self.choices[index]
        return c.text + c.calls_text()

    def text(self, index: int) -> str:
        """What to check: the released context, then the unreleased text."""
        c = self.choices[index]
        return c.context + c.text + c.calls_text()

    def release(self, index: int, checked: list[GuardrailEntity], final: bool) -> Delta | None:
        """After a passing check of `text(index)`: the delta that may leave now, if any."""
        c = self.choices[index]
        final = final or c.finish is not None
        shift = len(c.context)
        # Spans in the unreleased text's coordinates; one reaching back into the context is
        # clipped (what of it was released had passed an earlier check).
        spans = [
            s.model_copy(update={"start": max(s.start - shift, 0), "end": s.end - shift})
            for s in checked
            if s.end > shift
        ]
        in_calls: list[GuardrailEntity] = []
        if c.calls:  # spans in the calls' arguments apply to those (`calls_text`)
            end = len(c.text)
            in_calls = [
                s.model_copy(update={"start": s.start - end, "end": s.end - end})
                for s in spans
                if s.start >= end
            ]
            spans = [s.model_copy(update={"end": min(s.end, end)}) for s in spans if s.start < end]
        cut = release_boundary(c.text, spans, final)
        c.unchecked = 0
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
            calls = self._release_calls(c.calls, in_calls)
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
        self, pieces: list[ToolCallDelta], spans: list[GuardrailEntity]
    ) -> list[ToolCallDelta]:
        """The calls' pieces with the spans found in their arguments replaced (offsets in
        `calls_text`: each non-empty argument fragment after a newline)."""
        out: list[ToolCallDelta] = []
        pos = 0
        for p in pieces:
            arguments = p.arguments
            if arguments:
                pos += 1
                mine = [
                    s.model_copy(update={"start": s.start - pos, "end": s.end - pos})
                    for s in spans
                    if pos <= s.start and s.end <= pos + len(arguments)
                ]
                arguments = apply_spans(arguments, mine, len(arguments))
                pos += len(p.arguments)
            out.append(p.model_copy(update={"arguments": restore(arguments, self.pseudonyms)}))
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
