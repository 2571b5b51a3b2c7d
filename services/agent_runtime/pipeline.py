"""One chat turn: what it does (screen, retrieve, generate, relay, remember, ground), decided
over typed events only.

The guardrails service screens the input (blocked input never reaches a model; PII is
replaced, pseudonyms live only in this turn; memory gets the turn with its mapping and
stores real values), the memory service has it screen retrieved
text for indirect injection, and it checks every window of the output
(libs/guard_window.py: nothing reaches the client unchecked) unless the effective policy
screens no output at all: then, when nothing else is done to the output (memory,
grounding), the worker streams straight to the client and the turn watches a copy
(`TurnPlan.direct`). The turn knows no subjects, headers or bytes: it talks to the rest of
the platform only through `TurnPorts` (ports.py implements them on NATS, the unit tests in
memory).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from libs.context import RequestContext
from libs.errors import EnclaveError, ErrorInfo
from libs.events import (
    ChatMessage,
    ChatRequested,
    Delta,
    GenerateRequest,
    GroundReply,
    GroundRequest,
    GuardrailCheck,
    GuardrailEntity,
    GuardrailVerdict,
    MemoryItem,
    MemoryStoreRequested,
    RetrieveReply,
    RetrieveRequest,
    RouteReply,
    TurnEvent,
    Usage,
)
from libs.guard_window import OutputWindow, Structure, pseudonymize, restore, structure_of

# Turns before the last user message sent along with a retrieval (for query rewriting).
HISTORY_MESSAGES = 4


class Generating(Protocol):
    """A generation in flight (libs.generation.Generation)."""

    async def next(self) -> TurnEvent:
        """The worker's next event; raises `EnclaveError` when no worker accepted the
        generation or none sent a token in time."""
        ...

    def close(self) -> None: ...


class TurnPorts(Protocol):
    """What one turn may ask of the platform."""

    async def screen(self, check: GuardrailCheck) -> GuardrailVerdict:
        """The guardrails' verdict; an unreachable guardrail is an error verdict (fail closed)."""
        ...

    async def route(
        self, ctx: RequestContext, model: str, kind: Literal["chat", "completion"]
    ) -> RouteReply:
        """The router's answer for the model: its pool, and its retrieval default if any."""
        ...

    def generate(self, request: GenerateRequest, route: RouteReply, direct: bool) -> Generating:
        """Hand the request to the route's pool; `direct`: the worker streams to the client
        itself and the turn only watches."""
        ...

    async def send(self, event: TurnEvent) -> None:
        """One event to the turn's client."""
        ...

    async def retrieve(self, request: RetrieveRequest) -> RetrieveReply: ...

    async def remember(self, event: MemoryStoreRequested) -> None: ...

    async def ground(self, request: GroundRequest) -> GroundReply: ...


@dataclass
class Transcript:
    """The turn as screened, filled by `run_turn` for the log of learning from feedback
    (events.TurnLogged): the input the model saw (placeholders where the guardrails
    replaced values) and choice 0 as shown, its real values replaced by placeholders."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    pseudonyms: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return pseudonymize("".join(self.answer), self.pseudonyms)


@dataclass(frozen=True)
class TurnPlan:
    """What a turn does beyond generating, from the request and the input verdict."""

    rag: bool  # retrieve from a vector store, cite it
    remember: bool  # recall the user's memories, store this turn
    ground: bool  # check the answer against the retrieved chunks
    screen_output: bool  # pass the output through the guardrails' window
    relay: bool = False  # the turn relays the events itself (a route with failover)

    @property
    def retrieve(self) -> bool:
        return self.rag or self.remember

    @property
    def direct(self) -> bool:
        """Nothing to do to the output: the worker streams it to the client itself."""
        return not (self.screen_output or self.remember or self.ground or self.relay)


def plan_turn(event: ChatRequested, verdict: GuardrailVerdict, relay: bool = False) -> TurnPlan:
    chat = event.kind == "chat"
    rag = chat and event.rag is not None and event.rag.enabled
    return TurnPlan(
        rag=rag,
        remember=chat and event.memory is not None and event.memory.enabled,
        ground=rag and event.rag is not None and event.rag.grounding,
        screen_output=verdict.screen_output,
        relay=relay,
    )


def _notice(verdict: GuardrailVerdict, what: str) -> str:
    why = "; ".join(verdict.reasons[:3])
    return (
        f"{what} blocked by the guardrails rule `{verdict.rule}`"
        + (f" ({why})" if why else "")
        + f" under policy {verdict.policy_version}."
    )


def _input_check(event: ChatRequested, external: bool = False) -> GuardrailCheck:
    messages = event.messages
    if event.kind == "completion":
        messages = [ChatMessage(role="user", content=event.prompt or "")]
    return GuardrailCheck(ctx=event.ctx, direction="input", messages=messages, external=external)


def _guarded(event: ChatRequested, verdict: GuardrailVerdict) -> ChatRequested:
    """The request as the model may see it: the guardrail's texts in place of the originals."""
    if event.kind == "completion":
        return event.model_copy(update={"prompt": verdict.texts[0]})
    messages = [
        m.model_copy(update={"content": text if m.content is not None else None})
        for m, text in zip(event.messages, verdict.texts, strict=True)
    ]
    return event.model_copy(update={"messages": messages})


def _with_default(event: ChatRequested, route: RouteReply) -> ChatRequested:
    """A chat that does not say `rag` gets its model's default (`rag: {enabled: false}`
    opts out)."""
    if event.kind == "chat" and event.rag is None and route.rag is not None:
        return event.model_copy(update={"rag": route.rag})
    return event


def with_context(messages: list[ChatMessage], context: str) -> list[ChatMessage]:
    """The context pack joins the system message (small chat templates keep only one)."""
    if not context:
        return messages
    if messages and messages[0].role in ("system", "developer"):
        first = messages[0]
        merged = ChatMessage(role="system", content=f"{first.content or ''}\n\n{context}")
        return [merged, *messages[1:]]
    return [ChatMessage(role="system", content=context), *messages]


def _retrieval(event: ChatRequested, plan: TurnPlan, pseudonyms: dict[str, str]) -> RetrieveRequest:
    """The last user message as the query, with the turns before it (for rewriting)."""
    messages = event.messages
    asked = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    query = messages[asked].content or "" if asked >= 0 else ""
    history = [
        ChatMessage(role=m.role, content=m.content)
        for m in messages[max(0, asked - HISTORY_MESSAGES) : max(0, asked)]
        if m.role in ("user", "assistant") and m.content
    ]
    return RetrieveRequest(
        ctx=event.ctx,
        user=event.params.user or "",
        query=query,
        conversation_id=event.memory.conversation_id if event.memory else None,
        rag=event.rag if plan.rag else None,
        memories=plan.remember,
        history=history,
        pseudonyms=pseudonyms,
    )


async def run_turn(
    event: ChatRequested,
    ports: TurnPorts,
    retries: int = 1,
    transcript: Transcript | None = None,
) -> TurnEvent:
    """Run one turn to its end; every outcome, errors included, reaches the client.

    A worker that dies before its first token (`worker_lost`) is replaced by another of the
    pool, up to `retries` times; once a token came, its death ends the turn with the error
    (the client never sees a token twice).
    Returns the last event the client was sent: the turn's outcome. `transcript`, when
    given, gets the turn as screened."""
    ctx = event.ctx

    async def send(turn_event: TurnEvent) -> TurnEvent:
        await ports.send(turn_event)
        return turn_event

    async def fail(error: ErrorInfo) -> TurnEvent:
        return await send(TurnEvent(error=error, done=True))

    # Routed first (a cached answer, mostly): an input bound for an external provider is
    # always screened, never spared by the input passthrough.
    route = await ports.route(ctx, event.model, event.kind)
    verdict = await ports.screen(_input_check(event, route.external))
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
    if transcript is not None:
        transcript.messages = (
            [{"role": "user", "content": event.prompt or ""}]
            if event.kind == "completion"
            else [{"role": m.role, "content": m.content or ""} for m in event.messages]
        )
    event = _with_default(event, route)
    # A route that may fail over is relayed by the turn: a pool's error before its first
    # token must not reach the client, the next pool's answer must.
    plan = plan_turn(event, verdict, relay=bool(route.pools))
    pseudonyms = dict(verdict.pseudonyms)

    messages = event.messages
    # What the client saw of each choice and the chunks it was given, for the grounding check.
    seen: dict[int, list[str]] = {}
    chunks: list[str] = []
    cites: list[int] = []
    if plan.retrieve:
        context = await ports.retrieve(_retrieval(event, plan, pseudonyms))
        if context.error is not None:
            return await fail(context.error)
        messages = with_context(messages, context.context)
        chunks, cites = context.chunks, [c.index for c in context.citations]
        # Memories and the buffer hold real values; the model sees them as placeholders.
        pseudonyms = {**pseudonyms, **context.pseudonyms}
        await send(
            TurnEvent(
                citations=context.citations if plan.rag else None,
                memories=_restored(context.memories, pseudonyms) if plan.remember else None,
            )
        )

    window = (
        OutputWindow(pseudonyms, structure=structure_of(event.params))
        if plan.screen_output or pseudonyms
        else None
    )
    request = GenerateRequest(
        ctx=ctx,
        model=event.model,
        kind=event.kind,
        messages=messages,
        prompt=event.prompt,
        params=event.params,
    )
    generation = ports.generate(request, route, plan.direct)
    answer: list[str] = []
    adapter: str | None = None  # the digest of the adapter that serves it, once named
    tokens = False  # a delta came from the worker (and may have reached the client)
    try:
        while True:
            try:
                ev = await generation.next()
            except EnclaveError as exc:
                if exc.info.code == "worker_lost" and not tokens and retries > 0:
                    retries -= 1
                    generation.close()
                    generation = ports.generate(request, route, plan.direct)
                    continue
                return await fail(exc.info)
            tokens = tokens or bool(ev.deltas)
            # Direct: the worker sent it to the client itself; the turn only watches.
            last = ev
            if transcript is not None:
                transcript.pseudonyms = pseudonyms
                if plan.direct or window is None:
                    transcript.answer.extend(d.content for d in ev.deltas if d.index == 0)
            if not plan.direct:
                shown = ev.deltas
                if window is not None:
                    adapter = adapter or next(
                        (d.adapter_digest for d in ev.deltas if d.adapter_digest), None
                    )
                    released = await _screen_output(ports, ctx, window, ev, adapter)
                    if isinstance(released, ErrorInfo):
                        return await fail(released)
                    shown = released
                    if transcript is not None:
                        transcript.answer.extend(d.content for d in shown if d.index == 0)
                if plan.remember:
                    # What the user saw (screened, redacted or blocked), never the raw answer:
                    # the conversation buffer feeds later prompts.
                    answer.extend(d.content for d in shown if d.index == 0)
                if plan.ground:
                    _note(seen, shown)
                    if ev.done and ev.error is None:
                        await _send_grounding(ports, ctx, seen, chunks, cites, send)
                if window is None:
                    # No output screening under this policy: relay the events as they are.
                    await send(ev)
                elif shown or ev.done or ev.error or ev.usage:
                    last = await send(
                        TurnEvent(deltas=shown, usage=ev.usage, error=ev.error, done=ev.done)
                    )
            if ev.done:
                if plan.remember:
                    await ports.remember(
                        MemoryStoreRequested(
                            ctx=ctx,
                            user=event.params.user or "",
                            conversation_id=event.memory.conversation_id if event.memory else None,
                            messages=event.messages,
                            answer="".join(answer),
                            pseudonyms=pseudonyms,
                        )
                    )
                return last
    finally:
        generation.close()


def _restored(memories: list[MemoryItem], pseudonyms: dict[str, str]) -> list[MemoryItem]:
    """The recalled memories as their user may read them: real values, not placeholders."""
    return [m.model_copy(update={"text": restore(m.text, pseudonyms)}) for m in memories]


def _note(seen: dict[int, list[str]], deltas: list[Delta]) -> None:
    for d in deltas:
        seen.setdefault(d.index, []).append(d.content)


async def _send_grounding(
    ports: TurnPorts,
    ctx: RequestContext,
    seen: dict[int, list[str]],
    chunks: list[str],
    cites: list[int],
    send: Callable[[TurnEvent], Awaitable[TurnEvent]],
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
    ports: TurnPorts,
    ctx: RequestContext,
    window: OutputWindow,
    ev: TurnEvent,
    adapter: str | None = None,
) -> list[Delta] | ErrorInfo:
    """The deltas of `ev` that may reach the client now, after the output guardrail. A
    JSON answer is checked as one document when its choice ends, and each tool call's
    arguments as one document too: rewritten inside string values only, or blocked."""
    ready = window.add(ev.deltas)
    if ev.done:
        ready = window.pending()
    released: list[Delta] = []
    for index in ready:
        checks: list[tuple[int | None, str, Structure]] = []
        if window.unreleased(index):
            checks.append((None, window.text(index), window.structure_of(index)))
        checks += [(call, args, "json") for call, args in window.calls(index).items()]
        spans: list[GuardrailEntity] = []
        document: str | None = None
        arguments: dict[int, str] = {}
        for call, text, structure in checks:
            seen = await ports.screen(
                GuardrailCheck(
                    ctx=ctx,
                    direction="output",
                    messages=[ChatMessage(role="assistant", content=text)],
                    structure=structure,
                    adapter=adapter,
                ),
            )
            if seen.error is not None:
                return seen.error
            if not seen.allowed:
                released.append(window.block(index, " " + _notice(seen, "The answer was")))
                break
            if call is not None:
                arguments[call] = seen.texts[0]
            elif structure == "json":
                document = seen.texts[0]
            else:
                spans = seen.entities
        else:
            delta = window.release(
                index, spans, final=ev.done, document=document, arguments=arguments
            )
            if delta is not None:
                released.append(delta)
    return released
