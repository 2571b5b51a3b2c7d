"""One chat turn: input guard -> memory -> inference -> output guard -> stream to the client.

The guardrails service screens the input (blocked input never reaches a model; PII is
replaced, pseudonyms live only in this turn) and every window of the output
(libs/guard_window.py: nothing reaches the client unchecked). Memory still passes through.
The turn talks to the rest of the platform only through `TurnPorts`, so it runs the same
on NATS and in unit tests.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from libs.errors import ErrorInfo, upstream_timeout
from libs.events import (
    ChatMessage,
    ChatRequested,
    Delta,
    GenerateAccepted,
    GenerateRequest,
    GuardrailCheck,
    GuardrailEntity,
    GuardrailVerdict,
    TurnEvent,
    Usage,
)
from libs.guard_window import OutputWindow
from libs.subjects import Subjects


class DeltaSource(Protocol):
    async def next(self, timeout: float) -> bytes | None:
        """The next raw TurnEvent, or None when `timeout` passes first."""
        ...

    async def close(self) -> None: ...


class TurnPorts(Protocol):
    async def open_deltas(self, subject: str) -> DeltaSource: ...

    async def request_generation(self, request: GenerateRequest) -> GenerateAccepted: ...

    async def emit_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> None: ...

    async def guard(self, subject: str, check: GuardrailCheck) -> GuardrailVerdict:
        """The guardrails' verdict; an unreachable guardrail is an error verdict (fail closed)."""
        ...


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


async def run_turn(
    event: ChatRequested,
    ports: TurnPorts,
    subjects: Subjects,
    upstream_timeout_s: float,
    runtime_id: str = "",
) -> None:
    """Run one turn to its end; every outcome, errors included, reaches the client's subject."""
    ctx = event.ctx
    out = subjects.chat_stream(ctx.request_id)
    headers = ctx.headers()

    async def fail(error: ErrorInfo) -> None:
        await ports.emit_raw(
            out, TurnEvent(error=error, done=True).model_dump_json().encode(), headers
        )

    verdict = await ports.guard(subjects.guardrails_input, _input_check(event))
    if verdict.error is not None:
        await fail(verdict.error)
        return
    if not verdict.allowed:
        # A normal answer, finished by the content filter: no model sees the input.
        notice = _notice(verdict, "This request was")
        filtered = [
            Delta(index=i, content=notice, finish_reason="content_filter")
            for i in range(event.params.n)
        ]
        done = TurnEvent(deltas=filtered, usage=Usage(), done=True)
        await ports.emit_raw(out, done.model_dump_json().encode(), headers)
        return
    event = _guarded(event, verdict)
    window = OutputWindow(verdict.pseudonyms)

    deltas_subject = subjects.inference_deltas(ctx.request_id, secrets.token_hex(4))
    source = await ports.open_deltas(deltas_subject)
    try:
        accepted = await ports.request_generation(
            GenerateRequest(
                ctx=ctx,
                model=event.model,
                kind=event.kind,
                messages=event.messages,
                prompt=event.prompt,
                params=event.params,
                deltas_subject=deltas_subject,
            )
        )
        if not accepted.accepted:
            await fail(accepted.error or ErrorInfo(status=503, message="No worker accepted."))
            return
        served_by = {"runtime": runtime_id, "worker": accepted.worker or ""}
        await ports.emit_raw(
            out, TurnEvent(served_by=served_by).model_dump_json().encode(), headers
        )
        timeout = min(upstream_timeout_s, accepted.timeout_s or upstream_timeout_s)
        while True:
            data = await source.next(timeout)
            if data is None:
                await fail(upstream_timeout(f"no token from {event.model} in {timeout}s"))
                return
            ev = TurnEvent.model_validate_json(data)
            ready = window.add(ev.deltas)
            if ev.done:
                ready = window.pending()
            released: list[Delta] = []
            for index in ready:
                spans: list[GuardrailEntity] = []
                if window.unreleased(index):
                    check = GuardrailCheck(
                        ctx=ctx,
                        direction="output",
                        messages=[ChatMessage(role="assistant", content=window.text(index))],
                    )
                    seen = await ports.guard(subjects.guardrails_output, check)
                    if seen.error is not None:
                        await fail(seen.error)
                        return
                    if not seen.allowed:
                        released.append(window.block(index, " " + _notice(seen, "The answer was")))
                        continue
                    spans = seen.entities
                delta = window.release(index, spans, final=ev.done)
                if delta is not None:
                    released.append(delta)
            if released or ev.done or ev.error is not None or ev.usage is not None:
                relay = TurnEvent(deltas=released, usage=ev.usage, error=ev.error, done=ev.done)
                await ports.emit_raw(out, relay.model_dump_json().encode(), headers)
            if ev.done:
                return
    finally:
        await source.close()
