"""A stand-in engine that answers at once: it isolates the platform's own cost in benchmarks.

With `delay_ms` it answers slowly instead, which is how tests produce upstream timeouts.
With `echo` it repeats the last user message (or the prompt) in pieces of `chunk_chars`
characters, which is how tests see exactly what a model was given and returned; and, with
`tools`, how they script a tool call (the echoed text is parsed as a model's would be).
With `tool_results` as well, a conversation that ends in a tool result gets that result
repeated as the answer: a scripted model that calls a tool, then answers from its result.
"""

from __future__ import annotations

import time
from typing import Any

from libs.events import Delta, GenerateRequest, Usage
from services.inference_router.adapters.tool_calling import calling_emit
from services.inference_router.engine import Emit


class InstantEngine:
    def __init__(
        self,
        tokens: int = 16,
        delay_ms: float = 0.0,
        echo: bool = False,
        chunk_chars: int = 3,
        tool_results: bool = False,
        **_: Any,
    ) -> None:
        self.tokens = tokens
        self.echo = echo
        self.tool_results = tool_results
        self.chunk_chars = max(1, chunk_chars)
        self.delay_s = delay_ms / 1000.0
        self.runs_inline = self.delay_s == 0

    def generate(self, request: GenerateRequest, emit: Emit) -> Usage:
        # With tools, an echoed `<tool_call>` block is a call: a scripted model for tests.
        emit = calling_emit(request.params, emit)
        prompt = request.prompt or " ".join(m.content or "" for m in request.messages)
        if self.echo:
            roles = ("user", "tool") if self.tool_results else ("user",)
            said = request.prompt or next(
                (m.content or "" for m in reversed(request.messages) if m.role in roles), ""
            )
            pieces = [said[i : i + self.chunk_chars] for i in range(0, len(said), self.chunk_chars)]
        else:
            pieces = [f"w{i} " for i in range(self.tokens)]
        limit = request.params.max_tokens or len(pieces)
        count = min(len(pieces), limit)
        finish = "stop" if count == len(pieces) else "length"
        for choice in range(request.params.n):
            for i in range(count):
                if self.delay_s:
                    time.sleep(self.delay_s)
                emit(Delta(index=choice, content=pieces[i]))
            emit(Delta(index=choice, finish_reason=finish))
        return Usage(prompt_tokens=len(prompt.split()), completion_tokens=count * request.params.n)
