"""The runtime's agents: each tenant's definitions and skills from ENCLAVE_HOME, the tool
registry, and the two ways an agent runs, as a chat turn (`model: agent:<name>`) and as a
delegated child turn (`agent.delegate`); and approvals: a run that paused for one is
saved (`hold`) and goes on when an approver's decision arrives (`resume`)."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Protocol

from libs import rbac
from libs.approvals import new_approval_id
from libs.context import RequestContext
from libs.errors import EnclaveError, ErrorInfo, model_not_found
from libs.events import (
    AgentResumeRequested,
    ApprovalRecord,
    ChatRequested,
    DelegateRequested,
    DelegateResult,
    Delta,
    SkillsReply,
    SkillsRequest,
    TurnEvent,
)
from services.agent_runtime.adapters.agent_files import AgentFiles
from services.agent_runtime.adapters.skill_folders import SkillFolders
from services.agent_runtime.agent_loop import AgentLoop, AgentPorts, AgentRun, PausedRun, run_child
from services.agent_runtime.agent_turn import (
    AgentTurnPorts,
    answer_text,
    run_agent_turn,
    screen_answer,
    waiting_text,
)
from services.agent_runtime.agents import AgentDefinition, AgentError
from services.agent_runtime.builtin_tools import builtin_tools
from services.agent_runtime.mcp_tools import McpClient, McpServerSource, Toolset, toolset
from services.agent_runtime.skill_tool import LoadSkill
from services.agent_runtime.skills import Skill, SkillError
from services.agent_runtime.tools import ToolRegistry

log = logging.getLogger("enclave.agent_runtime.agents")


class Approvals(Protocol):
    """Where paused runs wait (libs/approvals.py: a JetStream KV bucket)."""

    async def create(self, record: ApprovalRecord) -> None: ...

    async def get(self, tenant: str, approval_id: str) -> tuple[ApprovalRecord, int] | None: ...

    async def update(self, record: ApprovalRecord, revision: int) -> bool: ...


class AgentRunner:
    def __init__(
        self,
        agents: AgentFiles,
        skills: SkillFolders,
        ports: AgentPorts,
        approvals: Approvals | None = None,
        mcp: tuple[McpServerSource, McpClient] | None = None,
    ) -> None:
        self.agents = agents
        self.skills = skills
        self.approvals = approvals
        self.mcp = mcp
        self.loop = AgentLoop(ToolRegistry.of([*builtin_tools(), LoadSkill(skills)]), ports)

    @classmethod
    def at(
        cls,
        home: Path,
        ports: AgentPorts,
        approvals: Approvals | None = None,
        mcp: tuple[McpServerSource, McpClient] | None = None,
    ) -> AgentRunner:
        """`$ENCLAVE_HOME/agents/<tenant>/<agent>.yaml`, `$ENCLAVE_HOME/skills/<tenant>/`;
        `mcp`: the tenants' MCP servers and the client that speaks to them."""
        return cls(
            AgentFiles(home / "agents"), SkillFolders(home / "skills"), ports, approvals, mcp
        )

    async def toolset(self, tenant: str, agent: AgentDefinition) -> Toolset:
        """The MCP tools `agent` names, from the tenant's enabled servers (none when the
        registry cannot be read: logged, and the agent runs with its other tools)."""
        if self.mcp is None:
            return Toolset()
        source, client = self.mcp
        try:
            return await toolset(source, client, tenant, agent.tools)
        except Exception:
            log.exception("the MCP servers of tenant %s could not be read", tenant)
            return Toolset()

    async def hold(self, ctx: RequestContext, agent: str, paused: PausedRun) -> ApprovalRecord:
        """Save a paused run; its approval record (status `pending`)."""
        assert self.approvals is not None
        call = paused.waiting
        record = ApprovalRecord(
            id=new_approval_id(),
            tenant=ctx.tenant,
            agent=agent,
            tool=call.function.name,
            call_id=call.id,
            arguments=call.function.arguments,
            ctx=ctx,
            state=paused.model_dump(mode="json"),
        )
        await self.approvals.create(record)
        return record

    async def resume(self, request: AgentResumeRequested) -> None:
        """Go on with a paused run that an approver decided on; its outcome goes into the
        approval record. A decision seen twice (a redelivery) finds the record done."""
        if self.approvals is None:
            return
        found = await self.approvals.get(request.ctx.tenant, request.approval_id)
        if found is None or found[0].status not in ("approved", "rejected"):
            return
        record, revision = found
        tenant = record.tenant
        agent = self.resolve(tenant, record.agent, f"agent:{record.agent}")
        if isinstance(agent, ErrorInfo):
            record.status, record.output = "failed", agent.message
        else:
            paused = PausedRun.model_validate(record.state)
            outcome = await self.loop.resume(
                agent,
                paused,
                record.status == "approved",
                AgentRun(
                    ctx=record.ctx, user=paused.user, toolset=await self.toolset(tenant, agent)
                ),
                self.subagents(tenant, agent),
            )
            if outcome.outcome == "paused" and outcome.paused is not None:
                outcome.paused.screen_output = paused.screen_output
                following = await self.hold(record.ctx, agent.name, outcome.paused)
                record.status, record.next_approval = "completed", following.id
                record.output = waiting_text(following)
            elif outcome.outcome == "error":
                record.status = "failed"
                record.output = outcome.reason or "The agent failed."
            else:
                text, finish = answer_text(outcome)
                deltas = [Delta(content=text, finish_reason=finish)]
                screened = (
                    await screen_answer(record.ctx, agent, deltas, {}, self.loop.ports.screen)
                    if paused.screen_output
                    else deltas
                )
                if isinstance(screened, ErrorInfo):
                    record.status, record.output = "failed", screened.message
                else:
                    record.status = "completed"
                    record.output = "".join(d.content for d in screened)
        record.state = {}  # the run is over: its conversation is not kept
        record.decided_at = record.decided_at or int(time.time())
        if not await self.approvals.update(record, revision):
            log.warning("approval %s changed while its run resumed", record.id)

    def resolve(self, tenant: str, name: str, model: str) -> AgentDefinition | ErrorInfo:
        try:
            return self.agents.get(tenant, name)
        except KeyError:
            return model_not_found(model)
        except AgentError as exc:
            return ErrorInfo(
                status=500, message=f"The agent cannot run: {exc}", code="agent_misconfigured"
            )

    def subagents(self, tenant: str, agent: AgentDefinition) -> dict[str, str]:
        """The agents it may delegate to that exist and read well: name -> description."""
        found: dict[str, str] = {}
        for name in agent.subagents:
            sub = self.resolve(tenant, name, name)
            if isinstance(sub, AgentDefinition):
                found[name] = sub.description
        return found

    async def chat(self, event: ChatRequested, name: str, ports: AgentTurnPorts) -> TurnEvent:
        """A chat turn on the agent `name`; every outcome reaches the client."""
        tenant = event.ctx.tenant
        agent = self.resolve(tenant, name, event.model)
        if isinstance(agent, ErrorInfo):
            failed = TurnEvent(error=agent, done=True)
            await ports.send(failed)
            return failed
        return await run_agent_turn(
            event,
            agent,
            self.loop,
            ports,
            list(self.skills.headers(tenant).values()),
            self.subagents(tenant, agent),
            self.hold if self.approvals is not None else None,
            await self.toolset(tenant, agent),
        )

    async def delegated(self, request: DelegateRequested) -> DelegateResult:
        """A child turn: the subagent's typed result, or why it could not run."""
        tenant = request.ctx.tenant
        agent = self.resolve(tenant, request.agent, f"agent:{request.agent}")
        if isinstance(agent, ErrorInfo):
            return DelegateResult(
                agent=request.agent, outcome="error", reason=agent.message, error=agent
            )
        return await run_child(
            self.loop,
            request,
            agent,
            list(self.skills.headers(tenant).values()),
            self.subagents(tenant, agent),
            await self.toolset(tenant, agent),
        )


def skill_json(skill: Skill, whole: bool = False) -> dict[str, object]:
    body: dict[str, object] = {
        "object": "skill",
        "name": skill.header.name,
        "description": skill.header.description,
        "allowed_tools": list(skill.header.allowed_tools)
        if skill.header.allowed_tools is not None
        else None,
        "resources": list(skill.resources),
    }
    if whole:
        body["instructions"] = skill.body
    return body


def _no_skill(name: str) -> EnclaveError:
    return EnclaveError(404, f"No skill named `{name}`.", "skill_not_found", "name")


async def manage_skills(runner: AgentRunner, request: SkillsRequest) -> SkillsReply:
    """The `agent.skills` operations on the tenant's skill folders (the runtime's home);
    every replica sees a change at its next listing (SkillFolders re-reads what changed)."""
    ctx = request.ctx
    if not rbac.may([ctx.role], rbac.Permission.MANAGE_SKILLS):
        raise EnclaveError(
            403, f"The role `{ctx.role}` may not manage skills.", "insufficient_permissions"
        )
    folders = runner.skills
    if request.op == "list":
        listing = folders.listing(ctx.tenant)
        data = []
        for name in listing.skills:
            try:
                data.append(skill_json(folders.load(ctx.tenant, name)))
            except (KeyError, SkillError):
                continue
        return SkillsReply(body={"object": "list", "data": data, "errors": listing.errors})
    name = request.name or ""
    if request.op == "get":
        try:
            return SkillsReply(body=skill_json(folders.load(ctx.tenant, name), whole=True))
        except KeyError:
            raise _no_skill(name) from None
        except SkillError as exc:
            raise EnclaveError(422, str(exc), "invalid_skill") from None
    if request.op == "delete":
        if not folders.remove(ctx.tenant, name):
            raise _no_skill(name)
        return SkillsReply(body={"object": "skill.deleted", "name": name, "deleted": True})
    files: dict[str, bytes] = {}
    for i, item in enumerate(request.files):
        try:
            files[item.path] = base64.b64decode(item.content_b64, validate=True)
        except ValueError:  # not base64 (binascii.Error), or not ASCII at all
            raise EnclaveError(
                400, f"`{item.path}`: the content is not base64.", "invalid_value", f"files[{i}]"
            ) from None
    try:
        skill = folders.install(ctx.tenant, files)
    except SkillError as exc:
        raise EnclaveError(400, str(exc), "invalid_skill", "files") from None
    return SkillsReply(body=skill_json(skill, whole=True))
