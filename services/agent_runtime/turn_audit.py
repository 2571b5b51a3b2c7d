"""The runtime's audit events: one per turn, completed or failed, with digests only."""

from __future__ import annotations

from typing import Any

import orjson

from libs.audit import AuditPublisher, digest
from libs.events import ChatRequested, TurnEvent


def outcome(final: TurnEvent | None, failure: BaseException | None) -> tuple[str, dict[str, Any]]:
    """("completed" | "failed", attrs) from the last event the client was sent."""
    if failure is not None:
        return "failed", {"error": type(failure).__name__}
    if final is None:
        return "failed", {"error": "no_output"}
    if final.error is not None:
        return "failed", {"error": final.error.code or str(final.error.status)}
    attrs: dict[str, Any] = {}
    if final.usage is not None:
        attrs = {
            "prompt_tokens": final.usage.prompt_tokens,
            "completion_tokens": final.usage.completion_tokens,
        }
    return ("completed" if final.done else "failed"), attrs


def served_by(final: TurnEvent | None) -> str | None:
    """The digest of the LoRA adapter that produced the turn's answer (None: the base model
    alone): the worker names it in the usage of its last event and on a choice's first
    delta."""
    if final is None:
        return None
    if final.usage is not None and final.usage.adapter_digest:
        return final.usage.adapter_digest
    return next((d.adapter_digest for d in final.deltas if d.adapter_digest), None)


async def record_turn(
    publisher: AuditPublisher,
    event: ChatRequested,
    last: TurnEvent | None,
    failure: BaseException | None = None,
) -> None:
    status, attrs = outcome(last, failure)
    prompt = event.prompt if event.kind == "completion" else None
    content = prompt if prompt is not None else [m.model_dump() for m in event.messages]
    await publisher.emit(
        f"turn.{status}",
        event.ctx,
        model=event.model,
        adapter=served_by(last),
        outcome="ok" if status == "completed" else "error",
        digests={"input": digest(orjson.dumps(content))},
        attrs={"kind": event.kind, **attrs},
    )
