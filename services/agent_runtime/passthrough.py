"""Whether a tenant's input may skip the guardrails now: the passthrough grant.

An input verdict under a policy that checks nothing on input says so (`passthrough_s`);
the runtime then lets that tenant's input through unasked for that long (capped by
`guard_passthrough_s`), until any policy changes (`guardrails.policy.changed`). A grant
asked for before a change and answered after it is void. Pure: the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from libs.events import GuardrailCheck, GuardrailVerdict


class InputPassthrough:
    def __init__(self, cap_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap_s = cap_s
        self.clock = clock
        # tenant -> (its last "allowed, unchanged" input verdict, until when it holds)
        self.granted: dict[str, tuple[GuardrailVerdict, float]] = {}
        # How many policy changes were announced: a grant from an older one is void.
        self.generation = 0

    @staticmethod
    def applies(check: GuardrailCheck) -> bool:
        """Only a tenant-level input check may be spared (never output, context, agents,
        nor an input about to leave for an external provider)."""
        return check.direction == "input" and check.agent is None and not check.external

    def held(self, check: GuardrailCheck) -> GuardrailVerdict | None:
        """The verdict that stands in for asking, with this check's texts; None: ask."""
        if not self.applies(check):
            return None
        held = self.granted.get(check.ctx.tenant)
        if held is None or held[1] <= self.clock():
            return None
        return held[0].model_copy(update={"texts": [m.content or "" for m in check.messages]})

    def grant(self, check: GuardrailCheck, verdict: GuardrailVerdict, asked_at: int) -> None:
        """Keep `verdict` for its tenant if it grants a passthrough; `asked_at` is the
        `generation` when the check was sent."""
        if (
            self.applies(check)
            and verdict.passthrough_s > 0
            and verdict.allowed
            and verdict.error is None
            and not verdict.pseudonyms
            and asked_at == self.generation
        ):
            until = self.clock() + min(verdict.passthrough_s, self.cap_s)
            self.granted[check.ctx.tenant] = (verdict, until)

    def policy_changed(self) -> None:
        self.generation += 1
        self.granted.clear()
