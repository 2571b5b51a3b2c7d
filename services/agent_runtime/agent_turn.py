"""A chat turn whose `model` names a configured agent (`agent:<name>`): the agent loop in
place of one generation, between the same guardrails as any turn.

The input is screened under the agent's policy (blocked input is an answer finished by
`content_filter`, and no model sees it); the agent runs (agent_loop.py) on the guarded
messages; its final answer passes the output guardrail through the same window as a
streamed answer (redactions applied, pseudonyms restored) and reaches the client as one
delta. A run a limit stopped says why, finished by `length`. Pure over `AgentTurnPorts`.
"""

from __future__ import annotations

from typing import Protocol

from libs.errors import ErrorInfo
from libs.events import (
    ChatMessage,
    ChatRequested,
    Delta,
    GuardrailCheck,
    GuardrailVerdict,
    TurnEvent,
)
from libs.guard_window import OutputWindow
from services.agent_runtime.agent_loop import AgentLoop, AgentRun
from services.agent_runtime.agents import AgentDefinition
from services.agent_runtime.pipeline import _guarded, _notice
from services.agent_runtime.skills import SkillHeader


class AgentTurnPorts(Protocol):
    async def screen(self, check: GuardrailCheck) -> GuardrailVerdict: ...

    async def send(self, event: TurnEvent) -> None: ...


def _unsupported(event: ChatRequested) -> ErrorInfo | None:
    fields = [
        ("tools", bool(event.params.tools)),
        ("n", event.params.n > 1),
        ("response_format", event.params.response_format is not None),
        ("rag", event.rag is not None and event.rag.enabled),
    ]
    for name, used in fields:
        if used:
            return ErrorInfo(
                status=400,
                message=f"`{name}` cannot be used with an agent model; the agent's own "
                "definition says what it uses.",
                code="unsupported_parameter",
                param=name,
            )
    return None


async def run_agent_turn(
    event: ChatRequested,
    agent: AgentDefinition,
    loop: AgentLoop,
    ports: AgentTurnPorts,
    skills: list[SkillHeader] | None = None,
    subagents: dict[str, str] | None = None,
) -> TurnEvent:
    """Run the agent for one chat turn; returns the last event the client was sent."""
    ctx = event.ctx

    async def send(turn_event: TurnEvent) -> TurnEvent:
        await ports.send(turn_event)
        return turn_event

    async def fail(error: ErrorInfo) -> TurnEvent:
        return await send(TurnEvent(error=error, done=True))

    refused = _unsupported(event)
    if refused is not None:
        return await fail(refused)
    verdict = await ports.screen(
        GuardrailCheck(ctx=ctx, direction="input", messages=event.messages, agent=agent.policy)
    )
    if verdict.error is not None:
        return await fail(verdict.error)
    if not verdict.allowed:
        notice = _notice(verdict, "This request was")
        delta = Delta(content=notice, finish_reason="content_filter")
        return await send(TurnEvent(deltas=[delta], done=True))
    outcome = await loop.run(
        agent,
        _guarded(event, verdict).messages,
        AgentRun(ctx=ctx, user=event.params.user or ""),
        skills,
        subagents,
    )
    if outcome.outcome == "error":
        return await fail(
            outcome.error
            or ErrorInfo(status=500, message="The agent failed.", code="internal_error")
        )
    text, finish = outcome.output, "stop"
    if outcome.outcome == "limit":
        text, finish = f"{text}\n[The agent stopped: {outcome.reason}.]".lstrip(), "length"
    deltas = [Delta(content=text, finish_reason=finish)]
    if verdict.screen_output:
        window = OutputWindow(verdict.pseudonyms)
        window.add(deltas)
        deltas = []
        for index in window.pending():
            seen = await ports.screen(
                GuardrailCheck(
                    ctx=ctx,
                    direction="output",
                    messages=[ChatMessage(role="assistant", content=window.text(index))],
                    agent=agent.policy,
                )
            )
            if seen.error is not None:
                return await fail(seen.error)
            if not seen.allowed:
                deltas.append(window.block(index, _notice(seen, "The answer was")))
                continue
            released = window.release(index, seen.entities, final=True)
            if released is not None:
                deltas.append(released)
    return await send(TurnEvent(deltas=deltas, usage=outcome.usage, done=True))
