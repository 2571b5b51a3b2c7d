"""Tool calling on a worker, for any engine: the model's text becomes OpenAI's calls.

`calling_emit` wraps an engine's `emit`: each choice's text passes through a
libs.tool_calls.ToolCallStream, so text that cannot be part of a `<tool_call>` block goes on
at once, and a call goes out as `Delta.tool_calls` pieces (id and name, then arguments)
once its block is complete; the choice then finishes with "tool_calls". The prompt side
(tools in the system message, the grammar of a forced choice) is the engine's
(llamacpp.py), since only it knows its template.
"""

from __future__ import annotations

from libs.events import Delta, GenerationParams
from libs.tool_calls import ToolCallStream, call_deltas
from services.inference_router.engine import Emit


def calling_emit(params: GenerationParams, emit: Emit) -> Emit:
    """`emit` with each choice's calls found in its text (unchanged when no tools)."""
    if not params.tools:
        return emit
    streams: dict[int, ToolCallStream] = {}

    def parse(delta: Delta) -> None:
        stream = streams.setdefault(delta.index, ToolCallStream(params))
        before = stream.calls
        found = stream.feed(delta.content)
        content, calls = found.content, found.calls
        finish = delta.finish_reason
        if finish is not None:
            tail = stream.finish()
            content, calls = content + tail.content, calls + tail.calls
            if stream.calls and finish == "stop":
                finish = "tool_calls"
        if not content and not calls and finish is None:
            return
        emit(
            delta.model_copy(
                update={
                    "content": content,
                    "tool_calls": call_deltas(calls, before) or None,
                    "finish_reason": finish,
                    # Token logprobs belong to the text as the model wrote it.
                    "logprobs": delta.logprobs if content == delta.content else None,
                }
            )
        )

    return parse
