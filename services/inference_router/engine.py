"""What an inference engine is to a worker: generate deltas for a request, or embed texts.

Engines are adapters (llama.cpp, vLLM, an external OpenAI-compatible server, the instant
stand-in); the worker drives any of them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from libs.events import Delta, GenerateRequest, Usage

Emit = Callable[[Delta], None]


class GenerationStopped(Exception):
    """Raised by `emit` once the generation was cancelled (its client or runtime is gone, or
    a timeout ended it): an engine lets it propagate, which stops it at the next token
    (llama.cpp's token loop, the instant stand-in's, an HTTP stream's)."""


class GenerationEngine(Protocol):
    # True when generate() never blocks: the worker then calls it on its event loop.
    runs_inline: bool

    def generate(self, request: GenerateRequest, emit: Emit) -> Usage:
        """Produce every choice's deltas through `emit`, blocking; return the token usage.
        `emit` raises `GenerationStopped` when the generation is cancelled."""
        ...


class EmbeddingEngine(Protocol):
    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Vectors for the texts and the number of input tokens."""
        ...


def merged_params(request: GenerateRequest, defaults: dict[str, Any]) -> dict[str, Any]:
    """The request's sampling parameters, with the pool's defaults where the request is silent."""
    p = request.params
    out = dict(defaults)
    for name in ("temperature", "top_p", "max_tokens", "seed"):
        value = getattr(p, name)
        if value is not None:
            out[name] = value
    if p.stop:
        out["stop"] = list(p.stop)
    return out
