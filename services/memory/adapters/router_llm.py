"""The platform's own models as the LLM for memory extraction and query rewriting: the
shared generation client (libs/generation.py: route, worker, deltas), as the runtime uses
it."""

from __future__ import annotations

from typing import Any

from libs.context import RequestContext
from libs.events import ChatMessage, GenerationParams
from libs.generation import GenerationClient


class RouterLLM:
    def __init__(self, generations: GenerationClient, model: str) -> None:
        self.generations = generations
        self.model = model

    async def complete(
        self,
        ctx: RequestContext,
        messages: list[dict[str, str]],
        response_format: dict[str, Any] | None = None,
        max_tokens: int = 200,
        stop: list[str] | None = None,
    ) -> str:
        """The model's whole answer; raises `EnclaveError` when no worker answers."""
        return await self.generations.complete(
            ctx,
            self.model,
            [ChatMessage(role=m["role"], content=m["content"]) for m in messages],
            GenerationParams(
                temperature=0.0,
                max_tokens=max_tokens,
                stop=stop or [],
                response_format=response_format,
            ),
        )
