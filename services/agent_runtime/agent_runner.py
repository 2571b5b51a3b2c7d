"""The runtime's agents: each tenant's definitions and skills from ENCLAVE_HOME, the tool
registry, and the two ways an agent runs, as a chat turn (`model: agent:<name>`) and as a
delegated child turn (`agent.delegate`)."""

from __future__ import annotations

from pathlib import Path

from libs.errors import ErrorInfo, model_not_found
from libs.events import ChatRequested, DelegateRequested, DelegateResult, TurnEvent
from services.agent_runtime.adapters.agent_files import AgentFiles
from services.agent_runtime.adapters.skill_folders import SkillFolders
from services.agent_runtime.agent_loop import AgentLoop, AgentPorts, run_child
from services.agent_runtime.agent_turn import AgentTurnPorts, run_agent_turn
from services.agent_runtime.agents import AgentDefinition, AgentError
from services.agent_runtime.builtin_tools import builtin_tools
from services.agent_runtime.skill_tool import LoadSkill
from services.agent_runtime.tools import ToolRegistry


class AgentRunner:
    def __init__(self, agents: AgentFiles, skills: SkillFolders, ports: AgentPorts) -> None:
        self.agents = agents
        self.skills = skills
        self.loop = AgentLoop(ToolRegistry.of([*builtin_tools(), LoadSkill(skills)]), ports)

    @classmethod
    def at(cls, home: Path, ports: AgentPorts) -> AgentRunner:
        """`$ENCLAVE_HOME/agents/<tenant>/<agent>.yaml`, `$ENCLAVE_HOME/skills/<tenant>/`."""
        return cls(AgentFiles(home / "agents"), SkillFolders(home / "skills"), ports)

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
        )
