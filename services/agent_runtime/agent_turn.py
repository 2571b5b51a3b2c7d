"""A chat turn whose `model` names a configured agent (`agent:<name>`): the agent loop in
place of one generation, between the same guardrails as any turn.

The input is screened under the agent's policy (blocked input is an answer finished by
`content_filter`, and no model sees it); the agent runs (agent_loop.py) on the guarded
messages; its final answer passes the output guardrail through the same window as a
streamed answer (redactions applied, pseudonyms restored) and reaches the client as one
delta. A run a limit stopped says why, finished by `length`. The client's own functions
(`tools`) are offered beside the agent's; a call of one ends the turn with that call
(`finish_reason: tool_calls`), for the client to run and continue. Each tool call's result
reaches the client as it completes (`TurnEvent.tool_steps`). A run that pauses for an
approval is handed to `hold` (which saves it) and the client is told what it waits for.
Pure over `AgentTurnPorts`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from libs.context import RequestContext
from libs.errors import ErrorInfo
from libs.events import (
    ApprovalRecord,
    ChatMessage,
    ChatRequested,
    Delta,
    GuardrailCheck,
    GuardrailVerdict,
    ToolCallDelta,
    ToolStep,
    TurnEvent,
)
from libs.guard_window import OutputWindow
from services.agent_runtime.agent_loop import AgentLoop, AgentOutcome, AgentRun, PausedRun
from services.agent_runtime.agents import AgentDefinition
from services.agent_runtime.mcp_tools import Toolset
from services.agent_runtime.pipeline import _guarded, _notice
from services.agent_runtime.skills import SkillHeader


class AgentTurnPorts(Protocol):
    async def screen(self, check: GuardrailCheck) -> GuardrailVerdict: ...

    async def send(self, event: TurnEvent) -> None: ...


# Saves a paused run (ctx, agent name, where it stopped); returns its approval record.
Hold = Callable[[RequestContext, str, PausedRun], Awaitable[ApprovalRecord]]
Screen = Callable[[GuardrailCheck], Awaitable[GuardrailVerdict]]


def waiting_text(record: ApprovalRecord) -> str:
    return (
        f"[The agent is waiting for an approval of its call of `{record.tool}` "
        f"(approval `{record.id}`).]"
    )


def answer_text(outcome: AgentOutcome) -> tuple[str, str]:
    """The answer of a finished run and its finish reason (a limit says why)."""
    if outcome.outcome == "limit":
        return f"{outcome.output}\n[The agent stopped: {outcome.reason}.]".lstrip(), "length"
    return outcome.output, "stop"


async def screen_answer(
    ctx: RequestContext,
    agent: AgentDefinition,
    deltas: list[Delta],
    pseudonyms: dict[str, str],
    screen: Screen,
) -> list[Delta] | ErrorInfo:
    """The answer's deltas through the output guardrail's window (redactions applied,
    pseudonyms restored; a blocked answer becomes the notice)."""
    window = OutputWindow(pseudonyms)
    window.add(deltas)
    out: list[Delta] = []
    for index in window.pending():
        seen = await screen(
            GuardrailCheck(
                ctx=ctx,
                direction="output",
                messages=[ChatMessage(role="assistant", content=window.text(index))],
                agent=agent.policy,
            )
        )
        if seen.error is not None:
            return seen.error
        if not seen.allowed:
            out.append(window.block(index, _notice(seen, "The answer was")))
            continue
        released = window.release(index, seen.entities, final=True)
        if released is not None:
            out.append(released)
    return out


def _unsupported(
    event: ChatRequested, agent: AgentDefinition, toolset: Toolset
) -> ErrorInfo | None:
    def refuse(name: str, message: str) -> ErrorInfo:
        return ErrorInfo(status=400, message=message, code="unsupported_parameter", param=name)

    fields = [
        ("n", event.params.n > 1),
        ("response_format", event.params.response_format is not None),
        ("rag", event.rag is not None and event.rag.enabled),
    ]
    for name, used in fields:
        if used:
            return refuse(
                name,
                f"`{name}` cannot be used with an agent model; the agent's own "
                "definition says what it uses.",
            )
    if event.params.tools and event.params.tool_choice not in (None, "auto"):
        return refuse("tool_choice", "An agent decides which tools it calls: `tool_choice` auto.")
    if event.params.parallel_tool_calls is False:
        return refuse("parallel_tool_calls", "An agent may call several tools in one step.")
    own = set(agent.tools) | {"load_skill", "delegate"} | toolset.names
    for tool in event.params.tools or []:
        if tool.function.name in own:
            return refuse(
                "tools",
                f"The function `{tool.function.name}` has the name of one of the agent's "
                "own tools.",
            )
    return None


async def run_agent_turn(
    event: ChatRequested,
    agent: AgentDefinition,
    loop: AgentLoop,
    ports: AgentTurnPorts,
    skills: list[SkillHeader] | None = None,
    subagents: dict[str, str] | None = None,
    hold: Hold | None = None,
    toolset: Toolset | None = None,
) -> TurnEvent:
    """Run the agent for one chat turn; returns the last event the client was sent.
    `toolset`: the MCP tools the agent names (mcp_tools.toolset)."""
    toolset = toolset or Toolset()
    ctx = event.ctx

    async def send(turn_event: TurnEvent) -> TurnEvent:
        await ports.send(turn_event)
        return turn_event

    async def fail(error: ErrorInfo) -> TurnEvent:
        return await send(TurnEvent(error=error, done=True))

    async def observe(step: ToolStep) -> None:
        await ports.send(TurnEvent(tool_steps=[step]))

    refused = _unsupported(event, agent, toolset)
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
        AgentRun(
            ctx=ctx,
            user=event.params.user or "",
            client_tools=tuple(event.params.tools or ()),
            toolset=toolset,
        ),
        skills,
        subagents,
        observe,
    )
    if outcome.outcome == "paused" and outcome.paused is not None:
        if hold is None:
            return await fail(
                ErrorInfo(
                    status=500,
                    message="The agent needs an approval, and this runtime keeps none.",
                    code="approvals_unavailable",
                )
            )
        outcome.paused.screen_output = verdict.screen_output
        record = await hold(ctx, agent.name, outcome.paused)
        step = ToolStep(
            call_id=record.call_id,
            name=record.tool,
            arguments=record.arguments,
            outcome="awaiting_approval",
            approval_id=record.id,
        )
        delta = Delta(content=waiting_text(record), finish_reason="stop")
        return await send(
            TurnEvent(tool_steps=[step], deltas=[delta], usage=outcome.usage, done=True)
        )
    if outcome.outcome == "error":
        return await fail(
            outcome.error
            or ErrorInfo(status=500, message="The agent failed.", code="internal_error")
        )
    if outcome.outcome == "tool_calls":
        calls = [
            ToolCallDelta(index=i, id=c.id, name=c.function.name, arguments=c.function.arguments)
            for i, c in enumerate(outcome.client_calls)
        ]
        deltas = [Delta(content=outcome.output, tool_calls=calls, finish_reason="tool_calls")]
    else:
        text, finish = answer_text(outcome)
        deltas = [Delta(content=text, finish_reason=finish)]
    if verdict.screen_output:
        screened = await screen_answer(ctx, agent, deltas, verdict.pseudonyms, ports.screen)
        if isinstance(screened, ErrorInfo):
            return await fail(screened)
        deltas = screened
    return await send(TurnEvent(deltas=deltas, usage=outcome.usage, done=True))
