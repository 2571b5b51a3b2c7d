"""One user message checked under the packaged policy, for the tests that list attacks to
catch and ordinary texts to pass."""

from __future__ import annotations

from libs.context import RequestContext
from libs.events import ChatMessage, GuardrailCheck
from services.guardrails.policy import EffectivePolicy
from services.guardrails.screen import Screener

CTX = RequestContext(tenant="acme", request_id="r1")


def cases(caught: list[str], passed: list[str]) -> list[tuple[str, bool]]:
    """(text, is an attack) for pytest's parametrize."""
    return [(t, True) for t in caught] + [(t, False) for t in passed]


def assert_judged(screener: Screener, policy: EffectivePolicy, text: str, attack: bool) -> None:
    """An attack is blocked by the injection threshold; an ordinary text is allowed."""
    check = GuardrailCheck(ctx=CTX, messages=[ChatMessage(role="user", content=text)])
    verdict = screener.check(check, policy)
    assert verdict.allowed is not attack, (text, verdict.injection_score, verdict.reasons)
    if attack:
        assert verdict.rule == "injection.threshold"
