"""Agent definitions: what an agent is (pure; adapters/agent_files.py reads them).

An agent is a model with instructions, the skills it may load, the server-side tools it may
call (and those whose calls wait for an approval), the agents it may delegate to, its
guardrail policy (the guardrails' agent level,
`tenants/<t>/agents/<policy>.yaml`; without one, the tenant's policy) and its limits:
on delegation depth, steps, tokens and wall time, so that no loop runs forever.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

AGENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
AGENT_PREFIX = "agent:"  # `model: agent:<name>` names a configured agent


class AgentError(ValueError):
    """An agent definition that cannot be used: the message names the file and the problem."""


class AgentLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_depth: int = Field(default=2, ge=0, le=8)  # how deep its delegation may go
    max_steps: int = Field(default=8, ge=1, le=64)  # generations in one run
    max_tokens: int = Field(default=16_384, ge=1, le=1_000_000)  # prompt + completion, all steps
    max_wall_s: float = Field(default=120.0, gt=0, le=3_600)
    max_step_tokens: int = Field(default=512, ge=1, le=32_768)  # completion tokens per step


class AgentDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=AGENT_NAME)
    model: str = Field(min_length=1, max_length=256)
    description: str = ""  # what a parent is told about it as a subagent
    instructions: str = ""
    skills: list[str] = Field(default_factory=list)
    # Server-side tools by name; an MCP server's as `mcp__<server>` (all it offers) or
    # `mcp__<server>__<tool>`.
    tools: list[str] = Field(default_factory=list)
    # Tools whose every call waits for an approver (a role with `approve_tools`); an MCP
    # server's `require_approval` adds its own.
    approvals: list[str] = Field(default_factory=list)
    subagents: list[str] = Field(default_factory=list)  # agents it may delegate to
    vector_store_ids: list[str] = Field(default_factory=list)  # for file_search
    guardrails: str | None = Field(default=None, pattern=AGENT_NAME)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    limits: AgentLimits = Field(default_factory=AgentLimits)

    @property
    def policy(self) -> str | None:
        """The guardrails' agent level this agent runs under (None: the tenant's policy;
        the guardrails refuse an agent level that has no policy file)."""
        return self.guardrails


def parse_agent(where: str, data: Any, name: str | None = None) -> AgentDefinition:
    """An agent from its YAML document; `name`: the file's, which the document must match."""
    if not isinstance(data, dict):
        raise AgentError(f"{where}: an agent definition must be a YAML mapping")
    if name is not None:
        data = {"name": name, **data}
    try:
        agent = AgentDefinition.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "document"
        raise AgentError(f"{where}: `{field}`: {err['msg']}") from None
    if name is not None and agent.name != name:
        raise AgentError(f"{where}: `name` is `{agent.name}` but the file is `{name}.yaml`")
    if agent.name in agent.subagents:
        raise AgentError(f"{where}: an agent cannot delegate to itself")
    servers = [t for t in agent.tools if t.startswith("mcp__") and t.count("__") == 1]
    unknown = [
        t
        for t in agent.approvals
        if t not in agent.tools and not any(t.startswith(f"{s}__") for s in servers)
    ]
    if unknown:
        raise AgentError(f"{where}: `approvals` names `{unknown[0]}`, which is not in `tools`")
    return agent


def agent_name(model: str) -> str | None:
    """The agent a request's `model` names (`agent:<name>`), or None for a plain model."""
    return model[len(AGENT_PREFIX) :] if model.startswith(AGENT_PREFIX) else None
