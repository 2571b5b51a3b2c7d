"""One agent run: step -> tool calls -> results -> step, until the model answers without a
call or a limit stops it. Pure over `AgentPorts` (the unit tests script the engine).

- Each step is one generation with the agent's tools offered (`tool_choice` auto); its
  calls run in order, each through the tool registry (arguments validated, audited), and
  each result passes the guardrails' `context` direction under the agent's policy before
  the model sees it (flagged or unscreenable results are withheld: fail closed).
- Delegate: a call of the `delegate` tool becomes a child turn (`DelegateRequested`) with
  the parent's context (request id, trace) and depth + 1; its typed `DelegateResult` is
  the call's result. At the depth limit the tool is not offered, and a call is refused.
- Limits (AgentLimits): steps, tokens (prompt + completion over all steps), wall time
  (the agent's, or what its parent has left, whichever ends first; a step or a tool that
  runs past it is cancelled), depth.
- MCP tools (`AgentRun.toolset`): offered beside the agent's own and run through the same
  registry path; a server's `require_approval` adds its tools to the approvals.
- Approvals: a call of a tool the agent lists under `approvals` pauses the run (outcome
  `paused`, its `PausedRun`: the conversation, the calls still to run, steps, tokens and
  wall time spent) until someone decides; `resume` goes on from there with the decision
  (approved: the call runs; rejected: the model is told so). A delegated task cannot wait
  for an approval: there the call is refused.
- Every call's outcome, as the model sees it, goes to `observe` (a client's stream of
  tool results).
- The client's own functions (`AgentRun.client_tools`) are offered beside the agent's; a
  step that calls one ends the run (outcome `tool_calls`) for the client to run it and
  continue the conversation with its result, as with any model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from pydantic import BaseModel, Field, ValidationError

from libs.context import RequestContext
from libs.errors import ErrorInfo
from libs.events import (
    ChatMessage,
    DelegateRequested,
    DelegateResult,
    FunctionDefinition,
    GenerateRequest,
    GenerationParams,
    GuardrailCheck,
    GuardrailVerdict,
    ToolCall,
    ToolDefinition,
    ToolStep,
    Usage,
)
from services.agent_runtime.agents import AgentDefinition
from services.agent_runtime.builtin_tools import ToolArgs
from services.agent_runtime.mcp_tools import Toolset
from services.agent_runtime.skills import SkillHeader, catalog_prompt
from services.agent_runtime.tools import (
    ToolContext,
    ToolPorts,
    ToolRegistry,
    ToolResult,
    clip,
    tool_call_event,
)

DELEGATE = "delegate"
LOAD_SKILL = "load_skill"
T = TypeVar("T")


@dataclass(frozen=True)
class StepReply:
    """One generation, whole: its text, its calls, what it cost, or why it failed."""

    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    error: ErrorInfo | None = None


class AgentPorts(ToolPorts, Protocol):
    async def step(self, request: GenerateRequest) -> StepReply: ...

    async def screen(self, check: GuardrailCheck) -> GuardrailVerdict: ...

    async def delegate(self, request: DelegateRequested) -> DelegateResult:
        """Run the child turn (on the bus: another runtime replica may take it)."""
        ...

    def now(self) -> float:
        """A monotonic clock, in seconds."""
        ...


@dataclass(frozen=True)
class AgentRun:
    """Who the run is for and where it sits in a delegation."""

    ctx: RequestContext
    user: str = ""
    depth: int = 0
    wall_s_left: float | None = None
    # The client's own functions (a chat's or a response's `tools`): a step that calls one
    # ends the run with that call for the client to run (top level only).
    client_tools: tuple[ToolDefinition, ...] = ()
    # The MCP tools its agent names, from the tenant's enabled servers (mcp_tools.py): run
    # like built-in tools; those in `toolset.approvals` wait for an approver.
    toolset: Toolset = field(default_factory=Toolset)


class PausedRun(BaseModel):
    """Where a run stopped to wait for an approval: enough to go on from there."""

    agent: str
    messages: list[ChatMessage]
    # The calls of the last step still to run; the first is the one waiting.
    pending: list[ToolCall]
    decisions: dict[str, bool] = Field(default_factory=dict)  # call id -> approved
    steps: int = 0
    usage: Usage = Field(default_factory=Usage)
    elapsed_s: float = 0.0
    user: str = ""
    screen_output: bool = True  # whether the answer passes the output guardrail

    @property
    def waiting(self) -> ToolCall:
        return self.pending[0]


Observe = Callable[[ToolStep], Awaitable[None]]


@dataclass
class AgentOutcome:
    agent: str
    output: str = ""
    outcome: Literal["ok", "limit", "error", "paused", "tool_calls"] = "ok"
    reason: str | None = None
    steps: int = 0
    usage: Usage = field(default_factory=Usage)
    messages: list[ChatMessage] = field(default_factory=list)
    error: ErrorInfo | None = None
    paused: PausedRun | None = None
    client_calls: list[ToolCall] = field(default_factory=list)

    def result(self) -> DelegateResult:
        return DelegateResult(
            agent=self.agent,
            output=self.output,
            outcome="error" if self.outcome in ("paused", "tool_calls") else self.outcome,
            reason=self.reason,
            steps=self.steps,
            usage=self.usage,
            error=self.error,
        )


class DelegateArgs(ToolArgs):
    agent: str = Field(min_length=1, max_length=64)
    task: str = Field(min_length=1, max_length=8_000)


class _OutOfTime(Exception):
    pass


def delegate_definition(subagents: dict[str, str]) -> ToolDefinition:
    """The `delegate` tool as the model sees it: the subagents it may hand a task to."""
    listed = "; ".join(f"{n}: {d}" if d else n for n, d in subagents.items())
    return ToolDefinition(
        function=FunctionDefinition(
            name=DELEGATE,
            description=f"Hand a focused task to a subagent and get its answer ({listed}).",
            parameters={
                "type": "object",
                "properties": {
                    "agent": {"type": "string", "enum": list(subagents)},
                    "task": {"type": "string"},
                },
                "required": ["agent", "task"],
                "additionalProperties": False,
            },
        )
    )


class AgentLoop:
    """Runs agents over the given registry and ports."""

    def __init__(self, registry: ToolRegistry, ports: AgentPorts) -> None:
        self.registry = registry
        self.ports = ports

    def offered(
        self, agent: AgentDefinition, run: AgentRun, subagents: dict[str, str]
    ) -> list[ToolDefinition]:
        names = list(agent.tools)
        if agent.skills and LOAD_SKILL not in names:
            names.append(LOAD_SKILL)
        tools = self.registry.definitions(names)
        if subagents and run.depth < agent.limits.max_depth:
            tools.append(delegate_definition(subagents))
        return tools

    def system(self, agent: AgentDefinition, skills: list[SkillHeader]) -> str:
        allowed = [s for s in skills if s.name in agent.skills]
        return "\n\n".join(p for p in (agent.instructions, catalog_prompt(allowed)) if p)

    async def run(
        self,
        agent: AgentDefinition,
        messages: list[ChatMessage],
        run: AgentRun,
        skills: list[SkillHeader] | None = None,
        subagents: dict[str, str] | None = None,
        observe: Observe | None = None,
    ) -> AgentOutcome:
        """Run `agent` on the conversation until it answers, a limit stops it or a call
        waits for approval. `skills`: the tenant's skill headers; `subagents`: name ->
        description of the agents it may delegate to (those of `agent.subagents` that
        exist); `observe`: told each call's result."""
        system = self.system(agent, skills or [])
        convo = [ChatMessage(role="system", content=system)] if system else []
        convo += [m for m in messages if m.role not in ("system", "developer")]
        state = PausedRun(agent=agent.name, messages=convo, pending=[], user=run.user)
        return await self._drive(agent, run, state, subagents, observe)

    async def resume(
        self,
        agent: AgentDefinition,
        paused: PausedRun,
        approved: bool,
        run: AgentRun,
        subagents: dict[str, str] | None = None,
        observe: Observe | None = None,
    ) -> AgentOutcome:
        """Go on with a paused run, the waiting call approved or rejected (its system
        message, the skills' catalog included, is in the saved conversation)."""
        state = paused.model_copy(deep=True)
        state.decisions[state.waiting.id] = approved
        return await self._drive(agent, run, state, subagents, observe)

    async def _drive(
        self,
        agent: AgentDefinition,
        run: AgentRun,
        state: PausedRun,
        subagents: dict[str, str] | None,
        observe: Observe | None,
    ) -> AgentOutcome:
        limits = agent.limits
        wall = limits.max_wall_s
        if run.wall_s_left is not None:
            wall = min(wall, run.wall_s_left)
        started = self.ports.now()
        deadline = started + wall - state.elapsed_s
        subs = {n: d for n, d in (subagents or {}).items() if n in agent.subagents}
        registry = self.registry
        tools = self.offered(agent, run, subs)
        if run.toolset.tools:
            registry = registry.with_tools(run.toolset.tools)
            tools += registry.definitions(t.name for t in run.toolset.tools)
        waits = set(agent.approvals) | run.toolset.approvals
        client = list(run.client_tools) if run.depth == 0 else []
        client_names = {t.function.name for t in client}
        tools += client
        convo = state.messages
        out = AgentOutcome(agent=agent.name, messages=convo, steps=state.steps, usage=state.usage)
        context = ToolContext(
            ctx=run.ctx,
            user=run.user,
            vector_store_ids=tuple(agent.vector_store_ids),
            agent=agent.name,
            skills=tuple(agent.skills),
        )

        def stop(reason: str) -> AgentOutcome:
            out.outcome, out.reason = "limit", reason
            return out

        async def timed(work: Awaitable[T]) -> T:
            left = deadline - self.ports.now()
            if left <= 0:
                raise _OutOfTime
            try:
                async with asyncio.timeout(left):
                    return await work
            except TimeoutError:
                raise _OutOfTime from None

        try:
            while True:
                while state.pending:
                    call = state.pending[0]
                    if call.function.name in waits and call.id not in state.decisions:
                        if run.depth == 0:
                            state.steps, state.usage = out.steps, out.usage
                            state.elapsed_s += self.ports.now() - started
                            out.outcome, out.paused = "paused", state
                            out.reason = f"the call of `{call.function.name}` awaits approval"
                            return out
                        state.decisions[call.id] = False
                    result = await self._call(
                        agent, run, subs, call, context, deadline, tools, state, timed, registry
                    )
                    seen = await self._screened(agent, run, result)
                    convo.append(ChatMessage(role="tool", tool_call_id=call.id, content=seen))
                    state.pending.pop(0)
                    if observe is not None:
                        await observe(
                            ToolStep(
                                call_id=call.id,
                                name=call.function.name,
                                arguments=call.function.arguments,
                                output=seen,
                                outcome=result.outcome,
                            )
                        )
                if out.steps >= limits.max_steps:
                    return stop(f"the agent took its {limits.max_steps} steps without answering")
                left = limits.max_tokens - out.usage.total_tokens
                if left <= 0:
                    return stop(f"the agent used its {limits.max_tokens} tokens")
                reply = await timed(
                    self.ports.step(
                        GenerateRequest(
                            ctx=run.ctx,
                            model=agent.model,
                            messages=list(convo),
                            params=GenerationParams(
                                temperature=agent.temperature,
                                max_tokens=min(limits.max_step_tokens, left),
                                user=run.user or None,
                                tools=tools or None,
                                tool_choice="auto" if tools else None,
                            ),
                            deltas_subject="",
                        )
                    )
                )
                out.steps += 1
                out.usage = Usage(
                    prompt_tokens=out.usage.prompt_tokens + reply.usage.prompt_tokens,
                    completion_tokens=out.usage.completion_tokens + reply.usage.completion_tokens,
                )
                if reply.error is not None:
                    out.outcome, out.error, out.reason = "error", reply.error, reply.error.message
                    return out
                if not reply.tool_calls:
                    out.output = reply.content
                    convo.append(ChatMessage(role="assistant", content=reply.content))
                    if reply.finish_reason == "length":
                        out.reason = "the last step was cut by its token limit"
                    return out
                convo.append(
                    ChatMessage(
                        role="assistant", content=reply.content or None, tool_calls=reply.tool_calls
                    )
                )
                mine = [c for c in reply.tool_calls if c.function.name in client_names]
                if mine:
                    # The client runs its functions; the run ends here (server-side calls
                    # of the same step are not run: the model may call them again).
                    out.outcome, out.client_calls, out.output = "tool_calls", mine, reply.content
                    return out
                state.pending = list(reply.tool_calls)
        except _OutOfTime:
            return stop(f"the agent ran out of its {wall:g} s of wall time")

    async def _call(
        self,
        agent: AgentDefinition,
        run: AgentRun,
        subs: dict[str, str],
        call: ToolCall,
        context: ToolContext,
        deadline: float,
        tools: list[ToolDefinition],
        state: PausedRun,
        timed: Callable[[Awaitable[ToolResult]], Awaitable[ToolResult]],
        registry: ToolRegistry,
    ) -> ToolResult:
        if state.decisions.get(call.id) is False:
            return await self._rejected(call, context, run)
        if call.function.name == DELEGATE:
            return await timed(self._delegate(agent, run, subs, call, context, deadline))
        if call.function.name in {t.function.name for t in tools}:
            return await timed(registry.call(call, context, self.ports))
        return await self._refuse(call, context, tools)

    async def _rejected(self, call: ToolCall, context: ToolContext, run: AgentRun) -> ToolResult:
        why = (
            "it needs an approval, which a delegated task cannot wait for"
            if run.depth > 0
            else "an approver rejected it"
        )
        result = ToolResult(
            call_id=call.id,
            name=call.function.name,
            content=f"Error: the call of `{call.function.name}` was not run: {why}.",
            outcome="rejected",
        )
        await self.ports.audit(tool_call_event(context, call, result))
        return result

    async def _refuse(
        self, call: ToolCall, context: ToolContext, tools: list[ToolDefinition]
    ) -> ToolResult:
        known = ", ".join(t.function.name for t in tools) or "none"
        result = ToolResult(
            call_id=call.id,
            name=call.function.name,
            content=f"Error: there is no tool `{call.function.name}` (tools: {known}).",
            outcome="unknown_tool",
        )
        await self.ports.audit(tool_call_event(context, call, result))
        return result

    async def _delegate(
        self,
        agent: AgentDefinition,
        run: AgentRun,
        subagents: dict[str, str],
        call: ToolCall,
        context: ToolContext,
        deadline: float,
    ) -> ToolResult:
        started = self.ports.now()

        def done(content: str, outcome: Literal["ok", "invalid_arguments", "error"]) -> ToolResult:
            return ToolResult(
                call_id=call.id,
                name=DELEGATE,
                content=content,
                outcome=outcome,
                duration_ms=int((self.ports.now() - started) * 1000),
            )

        try:
            args = DelegateArgs.model_validate_json(call.function.arguments or "{}")
        except ValidationError as exc:
            result = done(
                f"Error: invalid arguments for `delegate`: {exc.errors()[0]['msg']}.",
                "invalid_arguments",
            )
        else:
            if run.depth >= agent.limits.max_depth:
                result = done(
                    f"Error: delegation depth limit ({agent.limits.max_depth}) reached.", "error"
                )
            elif args.agent not in subagents:
                known = ", ".join(subagents) or "none"
                result = done(
                    f"Error: no subagent `{args.agent}` (subagents: {known}).", "invalid_arguments"
                )
            else:
                child = await self.ports.delegate(
                    DelegateRequested(
                        ctx=run.ctx,
                        agent=args.agent,
                        task=args.task,
                        depth=run.depth + 1,
                        parent_agent=agent.name,
                        user=run.user,
                        wall_s_left=max(0.0, deadline - self.ports.now()),
                    )
                )
                body = child.model_dump(
                    include={"agent", "output", "outcome", "reason"}, exclude_none=True
                )
                result = done(clip(json.dumps(body)), "ok" if child.outcome == "ok" else "error")
        await self.ports.audit(tool_call_event(context, call, result))
        return result

    async def _screened(self, agent: AgentDefinition, run: AgentRun, result: ToolResult) -> str:
        """The result as the model may see it, after the guardrails' context check."""
        verdict = await self.ports.screen(
            GuardrailCheck(
                ctx=run.ctx,
                direction="context",
                messages=[result.message()],
                agent=agent.policy,
            )
        )
        if verdict.error is not None:
            return "[The tool result was withheld: the guardrails could not screen it.]"
        if not verdict.allowed or 0 in verdict.flagged:
            why = f" (rule `{verdict.rule}`)" if verdict.rule else ""
            return f"[The tool result was withheld by the guardrails{why}.]"
        return verdict.texts[0] if verdict.texts else result.content


async def run_child(
    loop: AgentLoop,
    request: DelegateRequested,
    agent: AgentDefinition,
    skills: list[SkillHeader] | None = None,
    subagents: dict[str, str] | None = None,
    toolset: Toolset | None = None,
) -> DelegateResult:
    """A delegated task run as its own agent turn (the handler of `DelegateRequested`)."""
    outcome = await loop.run(
        agent,
        [ChatMessage(role="user", content=request.task)],
        AgentRun(
            ctx=request.ctx,
            user=request.user,
            depth=request.depth,
            wall_s_left=request.wall_s_left,
            toolset=toolset or Toolset(),
        ),
        skills,
        subagents,
    )
    return outcome.result()
