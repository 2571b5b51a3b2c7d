"""Asking the guardrails service for a verdict, the same way from every service.

Fail closed: a guardrail that cannot be reached yields an error verdict, never an allow.
"""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from libs.bus import event_bytes
from libs.errors import ErrorInfo
from libs.events import GuardrailCheck, GuardrailVerdict

GUARDRAILS_TIMEOUT_S = 10.0


async def ask_guardrails(
    nc: NatsClient, subject: str, check: GuardrailCheck, timeout: float = GUARDRAILS_TIMEOUT_S
) -> GuardrailVerdict:
    try:
        msg = await nc.request(
            subject, event_bytes(check), timeout=timeout, headers=check.ctx.headers()
        )
    except Exception:
        return GuardrailVerdict(
            allowed=False,
            error=ErrorInfo(
                status=503,
                message="The guardrails service is not available; try again later.",
                code="guardrails_unavailable",
            ),
        )
    return GuardrailVerdict.model_validate_json(msg.data)
