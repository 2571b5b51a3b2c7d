"""One chat turn: input guard -> memory -> inference -> output guard -> stream to the client.

For now the guard stages pass through; memory/RAG retrieval and inference are real.
The turn talks to the rest of the platform only through `TurnPorts`, so it runs the
same on NATS and in unit tests.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from libs.context import RUNTIME_HEADER, WORKER_HEADER
from libs.errors import ErrorInfo, upstream_timeout
from libs.events import (
    ChatMessage,
    ChatRequested,
    GenerateAccepted,
    GenerateRequest,
    MemoryStoreRequested,
    RetrieveReply,
    RetrieveRequest,
    TurnEvent,
)
from libs.subjects import Subjects


class DeltaSource(Protocol):
    subject: str  # where the worker streams this turn's deltas
    worker: str  # the worker that streams them, once one has

    async def next(self, timeout: float) -> bytes | None:
        """The next raw TurnEvent, or None when `timeout` passes first."""
        ...

    async def close(self) -> None: ...


class TurnPorts(Protocol):
    async def open_deltas(self, request_id: str) -> DeltaSource: ...

    async def request_generation(self, request: GenerateRequest) -> GenerateAccepted: ...

    async def emit_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> None: ...

    async def retrieve_context(self, request: RetrieveRequest) -> RetrieveReply: ...

    async def store_memory(self, event: MemoryStoreRequested) -> None: ...


def _uses_rag(event: ChatRequested) -> bool:
    return event.kind == "chat" and event.rag is not None and event.rag.enabled


def _uses_memory(event: ChatRequested) -> bool:
    return event.kind == "chat" and event.memory is not None and event.memory.enabled


def with_context(messages: list[ChatMessage], context: str) -> list[ChatMessage]:
    """The context pack joins the system message (small chat templates keep only one)."""
    if not context:
        return messages
    if messages and messages[0].role in ("system", "developer"):
        first = messages[0]
        merged = ChatMessage(role="system", content=f"{first.content or ''}\n\n{context}")
        return [merged, *messages[1:]]
    return [ChatMessage(role="system", content=context), *messages]


async def run_turn(
    event: ChatRequested,
    ports: TurnPorts,
    subjects: Subjects,
    upstream_timeout_s: float,
    runtime_id: str = "",
) -> bytes:
    """Run one turn to its end; every outcome, errors included, reaches the client's subject.

    Returns the last event the client was sent: the turn's outcome."""
    ctx = event.ctx
    out = event.reply_subject
    headers = ctx.headers()

    async def fail(error: ErrorInfo) -> bytes:
        data = TurnEvent(error=error, done=True).model_dump_json().encode()
        await ports.emit_raw(out, data, headers)
        return data

    messages = event.messages
    context: RetrieveReply | None = None
    remember = _uses_memory(event)
    if _uses_rag(event) or remember:
        query = next((m.content or "" for m in reversed(messages) if m.role == "user"), "")
        context = await ports.retrieve_context(
            RetrieveRequest(
                ctx=ctx,
                user=event.params.user or "",
                query=query,
                conversation_id=event.memory.conversation_id if event.memory else None,
                rag=event.rag if _uses_rag(event) else None,
                memories=remember,
            )
        )
        if context.error is not None:
            return await fail(context.error)
        messages = with_context(messages, context.context)
        cited = TurnEvent(
            citations=context.citations if _uses_rag(event) else None,
            memories=context.memories if remember else None,
        )
        await ports.emit_raw(out, cited.model_dump_json(exclude_none=True).encode(), headers)

    source = await ports.open_deltas(ctx.request_id)
    accepting = asyncio.ensure_future(
        ports.request_generation(
            GenerateRequest(
                ctx=ctx,
                model=event.model,
                kind=event.kind,
                messages=messages,
                prompt=event.prompt,
                params=event.params,
                deltas_subject=source.subject,
            )
        )
    )
    try:
        # The worker's first delta comes one hop sooner than its acceptance, which the
        # router relays: read both at once and let whichever comes first go on.
        pending = asyncio.ensure_future(source.next(upstream_timeout_s))
        await asyncio.wait({accepting, pending}, return_when=asyncio.FIRST_COMPLETED)
        timeout = upstream_timeout_s
        if not pending.done():
            accepted = accepting.result()
            if not accepted.accepted:
                pending.cancel()
                return await fail(
                    accepted.error or ErrorInfo(status=503, message="No worker accepted.")
                )
            timeout = min(upstream_timeout_s, accepted.timeout_s or upstream_timeout_s)
            try:
                data = await asyncio.wait_for(pending, timeout)
            except TimeoutError:
                data = None
        else:
            data = pending.result()
        answer: list[str] = []
        while True:
            if data is None:
                return await fail(upstream_timeout(f"no token from {event.model} in {timeout}s"))
            relay_headers = {**headers, RUNTIME_HEADER: runtime_id, WORKER_HEADER: source.worker}
            # Pass-through until the output guardrail stage lands: relay the bytes as they are.
            await ports.emit_raw(out, data, relay_headers)
            if remember:
                answer.extend(
                    d.content for d in TurnEvent.model_validate_json(data).deltas if d.index == 0
                )
            if b'"done":true' in data:
                if remember:
                    await ports.store_memory(
                        MemoryStoreRequested(
                            ctx=ctx,
                            user=event.params.user or "",
                            conversation_id=event.memory.conversation_id if event.memory else None,
                            messages=event.messages,
                            answer="".join(answer),
                        )
                    )
                return data
            if accepting.done() and timeout == upstream_timeout_s:
                accepted = accepting.result()
                timeout = min(upstream_timeout_s, accepted.timeout_s or upstream_timeout_s)
            data = await source.next(timeout)
    finally:
        accepting.cancel()
        await source.close()
