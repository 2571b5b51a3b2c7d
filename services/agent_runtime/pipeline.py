"""One chat turn: input guard -> memory -> inference -> output guard -> stream to the client.

The guardrails service screens the input (blocked input never reaches a model; PII is
replaced, pseudonyms live only in this turn), the memory service has it screen retrieved
text for indirect injection, and it checks every window of the output
(libs/guard_window.py: nothing reaches the client unchecked) unless the effective policy
screens no output at all: then, when nothing else is done to the output (memory,
grounding), the worker streams straight to the client and the turn watches a copy. The
turn talks to the rest of the platform only through `TurnPorts`, so it runs the same on
NATS and in unit tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from libs.context import RUNTIME_HEADER, WORKER_HEADER, RequestContext
from libs.errors import ErrorInfo, upstream_timeout
from libs.events import (
    ChatMessage,
    ChatRequested,
    Delta,
    GenerateAccepted,
    GenerateRequest,
    GroundReply,
    GroundRequest,
    GuardrailCheck,
    GuardrailEntity,
    GuardrailVerdict,
    MemoryStoreRequested,
    RetrieveReply,
    RetrieveRequest,
    RouteReply,
    TurnEvent,
    Usage,
)
from libs.guard_window import OutputWindow
from libs.subjects import Subjects

# Turns before the last user message sent along with a retrieval (for query rewriting).
HISTORY_MESSAGES = 4


class DeltaSource(Protocol):
    subject: str  # where the worker streams this turn's deltas
    worker: str  # the worker that streams them, once one has

    async def next(self, timeout: float) -> bytes | None:
        """The next raw TurnEvent, or None when `timeout` passes first."""
        ...

    async def close(self) -> None: ...


class TurnPorts(Protocol):
    async def open_deltas(self, request_id: str) -> DeltaSource: ...

    async def route(
        self, ctx: RequestContext, model: str, kind: Literal["chat", "completion"]
    ) -> RouteReply:
        """The router's answer for the model: its pool, and its retrieval default if any."""
        ...

    async def request_generation(
        self, request: GenerateRequest, route: RouteReply
    ) -> GenerateAccepted: ...

    async def emit_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> None: ...

    async def guard(self, subject: str, check: GuardrailCheck) -> GuardrailVerdict:
        """The guardrails' verdict; an unreachable guardrail is an error verdict (fail closed)."""
        ...

    async def retrieve_context(self, request: RetrieveRequest) -> RetrieveReply: ...

    async def store_memory(self, event: MemoryStoreRequested) -> None: ...

    async def ground(self, request: GroundRequest) -> GroundReply: ...


def _notice(verdict: GuardrailVerdict, what: str) -> str:
    why = "; ".join(verdict.reasons[:3])
    return (
        f"{what} blocked by the guardrails rule `{verdict.rule}`"
        + (f" ({why})" if why else "")
        + f" under policy {verdict.policy_version}."
    )


def _input_check(event: ChatRequested) -> GuardrailCheck:
    messages = event.messages
    if event.kind == "completion":
        messages = [ChatMessage(role="user", content=event.prompt or "")]
    return GuardrailCheck(ctx=event.ctx, direction="input", messages=messages)


def _guarded(event: ChatRequested, verdict: GuardrailVerdict) -> ChatRequested:
    """The request as the model may see it: the guardrail's texts in place of the originals."""
    if event.kind == "completion":
        return event.model_copy(update={"prompt": verdict.texts[0]})
    messages = [
        m.model_copy(update={"content": text if m.content is not None else None})
        for m, text in zip(event.messages, verdict.texts, strict=True)
    ]
    return event.model_copy(update={"messages": messages})


def _uses_rag(event: ChatRequested) -> bool:
    return event.kind == "chat" and event.rag is not None and event.rag.enabled


def _checks_grounding(event: ChatRequested) -> bool:
    return _uses_rag(event) and event.rag is not None and event.rag.grounding


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


def _encode(event: TurnEvent) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()


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

    async def send(turn_event: TurnEvent, with_headers: dict[str, str] = headers) -> bytes:
        data = _encode(turn_event)
        await ports.emit_raw(out, data, with_headers)
        return data

    async def fail(error: ErrorInfo) -> bytes:
        return await send(TurnEvent(error=error, done=True))

    verdict = await ports.guard(subjects.guardrails_input, _input_check(event))
    if verdict.error is not None:
        return await fail(verdict.error)
    if not verdict.allowed:
        # A normal answer, finished by the content filter: no model sees the input.
        notice = _notice(verdict, "This request was")
        filtered = [
            Delta(index=i, content=notice, finish_reason="content_filter")
            for i in range(event.params.n)
        ]
        return await send(TurnEvent(deltas=filtered, usage=Usage(), done=True))
    event = _guarded(event, verdict)
    route = await ports.route(ctx, event.model, event.kind)
    if event.kind == "chat" and event.rag is None and route.rag is not None:
        # A chat that does not say `rag` gets its model's default (`rag: {enabled: false}`
        # opts out).
        event = event.model_copy(update={"rag": route.rag})

    messages = event.messages
    grounding = _checks_grounding(event)
    # What the client saw of each choice and the chunks it was given, for the grounding check.
    seen: dict[int, list[str]] = {}
    chunks: list[str] = []
    cites: list[int] = []
    remember = _uses_memory(event)
    if _uses_rag(event) or remember:
        asked = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        query = messages[asked].content or "" if asked >= 0 else ""
        # The turns before it, for the memory service to rewrite a follow-up.
        history = [
            ChatMessage(role=m.role, content=m.content)
            for m in messages[max(0, asked - HISTORY_MESSAGES) : max(0, asked)]
            if m.role in ("user", "assistant") and m.content
        ]
        context = await ports.retrieve_context(
            RetrieveRequest(
                ctx=ctx,
                user=event.params.user or "",
                query=query,
                conversation_id=event.memory.conversation_id if event.memory else None,
                rag=event.rag if _uses_rag(event) else None,
                memories=remember,
                history=history,
            )
        )
        if context.error is not None:
            return await fail(context.error)
        messages = with_context(messages, context.context)
        chunks, cites = context.chunks, [c.index for c in context.citations]
        await send(
            TurnEvent(
                citations=context.citations if _uses_rag(event) else None,
                memories=context.memories if remember else None,
            )
        )

    window = OutputWindow(verdict.pseudonyms) if verdict.screen_output else None
    # Nothing to do to the output: the worker streams it to the client itself and this
    # turn only watches its copy (timeouts, the outcome), one hop less for every token.
    direct = window is None and not remember and not grounding
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
                client_subject=out if direct else None,
                client_headers={**headers, RUNTIME_HEADER: runtime_id} if direct else {},
            ),
            route,
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
        relay_headers: dict[str, str] = {}
        while True:
            if data is None:
                return await fail(upstream_timeout(f"no token from {event.model} in {timeout}s"))
            if not relay_headers:  # the worker is known from its first message on
                relay_headers = {
                    **headers,
                    RUNTIME_HEADER: runtime_id,
                    WORKER_HEADER: source.worker,
                }
            done = b'"done":true' in data
            if direct:
                last = data
            else:
                ev = TurnEvent.model_validate_json(data)
                if remember:
                    answer.extend(d.content for d in ev.deltas if d.index == 0)
                shown = ev.deltas
                if window is not None:
                    released = await _screen_output(ports, subjects, ctx, window, ev)
                    if isinstance(released, ErrorInfo):
                        return await fail(released)
                    shown = released
                if grounding:
                    _note(seen, shown)
                    if done and ev.error is None:
                        await _send_grounding(ports, ctx, seen, chunks, cites, send)
                if window is None:
                    # No output screening under this policy: relay the bytes as they are.
                    await ports.emit_raw(out, data, relay_headers)
                    last = data
                elif shown or ev.done or ev.error or ev.usage:
                    last = await send(
                        TurnEvent(deltas=shown, usage=ev.usage, error=ev.error, done=ev.done),
                        relay_headers,
                    )
            if done:
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
                return last
            if accepting.done() and timeout == upstream_timeout_s:
                accepted = accepting.result()
                timeout = min(upstream_timeout_s, accepted.timeout_s or upstream_timeout_s)
            data = await source.next(timeout)
    finally:
        accepting.cancel()
        await source.close()


def _note(seen: dict[int, list[str]], deltas: list[Delta]) -> None:
    for d in deltas:
        seen.setdefault(d.index, []).append(d.content)


async def _send_grounding(
    ports: TurnPorts,
    ctx: RequestContext,
    seen: dict[int, list[str]],
    chunks: list[str],
    cites: list[int],
    send: Callable[[TurnEvent], Awaitable[bytes]],
) -> None:
    """The grounding check of the answers as the client saw them, sent before the last
    event; when it cannot run, the field stays absent rather than claiming support."""
    reply = await ports.ground(
        GroundRequest(
            ctx=ctx,
            answers={i: "".join(parts) for i, parts in seen.items()},
            chunks=chunks,
            citations=cites,
        )
    )
    if reply.error is None:
        await send(TurnEvent(grounding=reply.sentences))


async def _screen_output(
    ports: TurnPorts, subjects: Subjects, ctx: RequestContext, window: OutputWindow, ev: TurnEvent
) -> list[Delta] | ErrorInfo:
    """The deltas of `ev` that may reach the client now, after the output guardrail."""
    ready = window.add(ev.deltas)
    if ev.done:
        ready = window.pending()
    released: list[Delta] = []
    for index in ready:
        spans: list[GuardrailEntity] = []
        if window.unreleased(index):
            seen = await ports.guard(
                subjects.guardrails_output,
                GuardrailCheck(
                    ctx=ctx,
                    direction="output",
                    messages=[ChatMessage(role="assistant", content=window.text(index))],
                ),
            )
            if seen.error is not None:
                return seen.error
            if not seen.allowed:
                released.append(window.block(index, " " + _notice(seen, "The answer was")))
                continue
            spans = seen.entities
        delta = window.release(index, spans, final=ev.done)
        if delta is not None:
            released.append(delta)
    return released
