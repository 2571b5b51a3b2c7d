"""A stand-in engine that answers at once: it isolates the platform's own cost in benchmarks.

With `delay_ms` it answers slowly instead, which is how tests produce upstream timeouts.
"""

from __future__ import annotations

import time
from typing import Any

from libs.events import Delta, GenerateRequest, Usage
from services.inference_router.engine import Emit


class InstantEngine:
    def __init__(self, tokens: int = 16, delay_ms: float = 0.0, **_: Any) -> None:
        self.tokens = tokens
        self.delay_s = delay_ms / 1000.0
        self.runs_inline = self.delay_s == 0

    def generate(self, request: GenerateRequest, emit: Emit) -> Usage:
        limit = request.params.max_tokens or self.tokens
        count = min(self.tokens, limit)
        finish = "stop" if count == self.tokens else "length"
        prompt = request.prompt or " ".join(m.content or "" for m in request.messages)
        for choice in range(request.params.n):
            for i in range(count):
                if self.delay_s:
                    time.sleep(self.delay_s)
                emit(Delta(index=choice, content=f"w{i} "))
            emit(Delta(index=choice, finish_reason=finish))
        return Usage(prompt_tokens=len(prompt.split()), completion_tokens=count * request.params.n)
