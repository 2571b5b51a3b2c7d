"""One chat turn: input guard -> memory -> inference -> output guard -> stream to the client.

For now the guard and memory stages pass through; inference is real. The turn talks to
the rest of the platform only through `TurnPorts`, so it runs the same on NATS and in
unit tests.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from libs.errors import ErrorInfo, upstream_timeout
from libs.events import ChatRequested, GenerateAccepted, GenerateRequest, TurnEvent
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
            # Pass-through until the output guardrail stage lands: relay the bytes as they are.
            await ports.emit_raw(out, data, headers)
            if b'"done":true' in data:
                return
    finally:
        await source.close()
