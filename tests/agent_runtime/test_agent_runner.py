"""The runtime's agents from ENCLAVE_HOME (agent_runner.py): an agent defined in a YAML
file loads a SKILL.md skill and delegates to a subagent, with a scripted engine."""

from __future__ import annotations

import json
from pathlib import Path

from libs.events import (
    ChatMessage,
    ChatRequested,
    DelegateRequested,
    DelegateResult,
    GenerateRequest,
)
from services.agent_runtime.agent_loop import StepReply
from services.agent_runtime.agent_runner import AgentRunner
from tests.agent_runtime.test_agent_loop import CTX, call, last
from tests.agent_runtime.test_agent_turn import TurnPorts

SKILL = """---
name: capitals
description: How to answer questions about capital cities.
---
Always ask the researcher, then answer in one sentence.
"""


class RunnerPorts(TurnPorts):
    runner: AgentRunner

    async def delegate(self, request: DelegateRequested) -> DelegateResult:
        self.delegated.append(request)
        return await self.runner.delegated(request)


def _home(tmp_path: Path) -> Path:
    (tmp_path / "agents" / "acme").mkdir(parents=True)
    (tmp_path / "agents" / "acme" / "lead.yaml").write_text(
        "model: lead-m\ninstructions: You lead.\nskills: [capitals]\nsubagents: [researcher]\n"
    )
    (tmp_path / "agents" / "acme" / "researcher.yaml").write_text(
        "model: res-m\ndescription: Looks things up.\n"
    )
    (tmp_path / "skills" / "acme" / "capitals").mkdir(parents=True)
    (tmp_path / "skills" / "acme" / "capitals" / "SKILL.md").write_text(SKILL)
    return tmp_path


def _lead(request: GenerateRequest) -> StepReply:
    said = last(request)
    if said.role == "user":
        return StepReply(tool_calls=[call("load_skill", {"name": "capitals"})])
    if "Always ask the researcher" in (said.content or ""):
        task = {"agent": "researcher", "task": "Capital of Norway?"}
        return StepReply(tool_calls=[call("delegate", task, 1)])
    return StepReply(content=json.loads(said.content or "{}")["output"])


def _event(model: str) -> ChatRequested:
    return ChatRequested(
        ctx=CTX, model=model, messages=[ChatMessage(role="user", content="Capital of Norway?")]
    )


async def test_a_configured_agent_uses_its_skill_and_its_subagent(tmp_path: Path) -> None:
    ports = RunnerPorts({"lead-m": _lead, "res-m": lambda r: StepReply(content="Oslo.")})
    ports.runner = AgentRunner.at(_home(tmp_path), ports)
    out = await ports.runner.chat(_event("agent:lead"), "lead", ports)
    assert [(d.content, d.finish_reason) for d in out.deltas] == [("Oslo.", "stop")]
    first = ports.steps[0]
    system = first.messages[0].content or ""
    assert system.startswith("You lead.") and "- capitals: How to answer" in system
    assert "Always ask" not in system  # the body only once the skill is chosen
    offered = [t.function.name for t in first.params.tools or []]
    assert offered == ["load_skill", "delegate"]
    [child] = ports.delegated
    assert (child.agent, child.depth, child.ctx.request_id) == ("researcher", 1, CTX.request_id)
    assert [e.attrs["tool"] for e in ports.audited] == ["load_skill", "delegate"]


async def test_unknown_and_malformed_agents(tmp_path: Path) -> None:
    home = _home(tmp_path)
    ports = RunnerPorts({})
    ports.runner = AgentRunner.at(home, ports)
    out = await ports.runner.chat(_event("agent:nobody"), "nobody", ports)
    assert out.error is not None and (out.error.status, out.error.code) == (404, "model_not_found")
    (home / "agents" / "acme" / "lead.yaml").write_text("model: m\nlimits: {max_steps: -1}\n")
    out = await ports.runner.chat(_event("agent:lead"), "lead", ports)
    assert out.error is not None and out.error.status == 500
    assert "agents/acme/lead.yaml: `limits.max_steps`" in out.error.message
    result = await ports.runner.delegated(
        DelegateRequested(ctx=CTX, agent="ghost", task="t", depth=1)
    )
    assert result.outcome == "error" and result.error is not None
    assert result.error.code == "model_not_found"
    assert ports.steps == []
