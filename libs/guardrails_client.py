"""Asking the guardrails service for a verdict, the same way from every service.

Fail closed: a guardrail that cannot be reached yields an error verdict, never an allow.
"""

from __future__ import annotations

from libs.events import GuardrailCheck, GuardrailVerdict
from libs.rpc import Bus, Peer


async def ask_guardrails(
    bus: Bus, check: GuardrailCheck, peer: Peer | None = None
) -> GuardrailVerdict:
    """The verdict on `check` (guardrails.output for output windows, else guardrails.input)."""
    subjects = bus.subjects
    subject = (
        subjects.guardrails_output if check.direction == "output" else subjects.guardrails_input
    )
    return await bus.ask(
        peer or bus.peers.guardrails,
        subject,
        check,
        GuardrailVerdict,
        failed=lambda error: GuardrailVerdict(allowed=False, error=error),
    )
