"""MCP tools (services/agent_runtime/mcp_tools.py, adapters/mcp_client.py): a real MCP server
written with the `mcp` SDK (tests/agent_runtime/mcp_fixture_server.py) over stdio, run
under the sandbox's bubblewrap profile, and over streamable HTTP on 127.0.0.1; an agent
whose scripted model calls its tools through the runner, the registry and the guardrails'
context check, each call audited; invalid arguments, approvals, disabled servers and
another tenant."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.events import ApprovalRecord, ChatMessage, ChatRequested, GenerateRequest
from libs.mcp_servers import McpServer, internal_address
from services.agent_runtime.adapters.mcp_client import McpSessions
from services.agent_runtime.agent_loop import StepReply
from services.agent_runtime.agent_runner import AgentRunner
from services.agent_runtime.mcp_tools import McpUnavailable
from tests.agent_runtime.test_agent_loop import CTX, call, last
from tests.agent_runtime.test_agent_runner import RunnerPorts
from tests.infra import free_port

FIXTURE = Path(__file__).with_name("mcp_fixture_server.py")


def stdio(name: str = "fx", tenant: str = "acme", **kw: Any) -> McpServer:
    return McpServer(
        tenant=tenant,
        name=name,
        transport="stdio",
        command="python",
        args=["-c", FIXTURE.read_text()],
        enabled=kw.pop("enabled", True),
        **kw,
    )


class Servers:
    """The registry as the runtime reads it (SqlMcpServers' shape): enabled servers only."""

    def __init__(self, *servers: McpServer) -> None:
        self.all = list(servers)

    async def servers(self, tenant: str) -> list[McpServer]:
        return [s for s in self.all if s.tenant == tenant and s.enabled]


class Approvals:
    def __init__(self) -> None:
        self.records: dict[str, tuple[ApprovalRecord, int]] = {}

    async def create(self, record: ApprovalRecord) -> None:
        self.records[record.id] = (record, 1)

    async def get(self, tenant: str, approval_id: str) -> tuple[ApprovalRecord, int] | None:
        found = self.records.get(approval_id)
        return found if found and found[0].tenant == tenant else None

    async def update(self, record: ApprovalRecord, revision: int) -> bool:
        self.records[record.id] = (record, revision + 1)
        return True


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(FIXTURE), "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(url, timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("the streamable HTTP fixture did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _home(tmp_path: Path, tools: str, approvals: str = "[]") -> Path:
    (tmp_path / "agents" / "acme").mkdir(parents=True, exist_ok=True)
    (tmp_path / "agents" / "acme" / "calc.yaml").write_text(
        f"model: calc-m\ntools: {tools}\napprovals: {approvals}\n"
    )
    (tmp_path / "agents" / "globex").mkdir(parents=True, exist_ok=True)
    (tmp_path / "agents" / "globex" / "calc.yaml").write_text(f"model: calc-m\ntools: {tools}\n")
    return tmp_path


def _calc(args: dict[str, Any]) -> Any:
    """The scripted model: calls mcp__fx__add with `args`, then repeats what it got."""

    def script(request: GenerateRequest) -> StepReply:
        if last(request).role == "user":
            return StepReply(tool_calls=[call("mcp__fx__add", args)])
        return StepReply(content=f"Result: {last(request).content}")

    return script


def _event(tenant: str = "acme") -> ChatRequested:
    return ChatRequested(
        ctx=CTX.model_copy(update={"tenant": tenant}),
        model="agent:calc",
        messages=[ChatMessage(role="user", content="2 + 3?")],
    )


async def test_a_stdio_server_runs_in_the_sandbox(sessions: McpSessions) -> None:
    server = stdio()
    specs = {s.name: s for s in await sessions.list_tools(server)}
    assert {"add", "shout", "fail", "probe"} <= set(specs)
    assert specs["add"].input_schema["required"] == ["a", "b"]
    assert (await sessions.call(server, "add", {"a": 2, "b": 40})).text == "42"
    seen = (await sessions.call(server, "probe", {})).text
    # uid 65534 inside, no AF_INET socket (seccomp), none of the host's files, PATH only.
    assert seen.startswith("uid=65534 inet=refused errno 13 shadow=False home=False"), seen
    # (LC_CTYPE: Python's own locale coercion; PWD: bwrap's.)
    assert seen.endswith("env=['LC_CTYPE', 'PATH', 'PWD']"), seen
    failed = await sessions.call(server, "fail", {"why": "x"})
    assert failed.is_error and failed.text == "Error executing tool fail"  # the SDK hides why


async def test_a_streamable_http_server(sessions: McpSessions, http_server: str) -> None:
    server = McpServer(
        tenant="acme", name="web", transport="streamable_http", url=http_server, enabled=True
    )
    assert "shout" in {s.name for s in await sessions.list_tools(server)}
    assert (await sessions.call(server, "shout", {"text": "hi"})).text == "HI"
    gone = McpServer(
        tenant="acme",
        name="gone",
        transport="streamable_http",
        url=f"http://127.0.0.1:{free_port()}/mcp",
        enabled=True,
    )
    with pytest.raises(McpUnavailable):
        await sessions.list_tools(gone)
    # Unless the platform operator lists the host, an internal address is refused before
    # any connection: a tenant's admin cannot point the runtime at the platform's ports.
    strict = McpSessions(None)
    for url in (http_server, http_server.replace("127.0.0.1", "localhost"), "http://10.1.2.3/"):
        elsewhere = server.model_copy(update={"url": url})
        with pytest.raises(McpUnavailable, match="is an internal address"):
            await strict.list_tools(elsewhere)
    await strict.close()
    assert not internal_address("93.184.216.34") and not internal_address("2606:4700::1111")
    assert internal_address("169.254.169.254") and internal_address("::ffff:127.0.0.1")


async def test_an_agent_calls_an_mcp_tool(tmp_path: Path, sessions: McpSessions) -> None:
    ports = RunnerPorts({"calc-m": _calc({"a": 2, "b": 3})})
    runner = AgentRunner.at(_home(tmp_path, "[mcp__fx]"), ports, None, (Servers(stdio()), sessions))
    out = await runner.chat(_event(), "calc", ports)
    assert [d.content for d in out.deltas] == ["Result: 5"]
    offered = {t.function.name: t.function for t in ports.steps[0].params.tools or []}
    assert set(offered) == {"mcp__fx__add", "mcp__fx__shout", "mcp__fx__fail", "mcp__fx__probe"}
    assert offered["mcp__fx__add"].parameters["properties"]["a"]["type"] == "integer"
    # The result passed the guardrails' context check before the model saw it.
    assert [c.messages[0].content for c in ports.screened if c.direction == "context"] == ["5"]
    [audited] = ports.audited
    assert (audited.action, audited.outcome, audited.attrs["tool"]) == (
        "tool.call",
        "ok",
        "mcp__fx__add",
    )
    assert audited.digests["arguments"] and "duration_ms" in audited.attrs
    steps = [s for e in ports.sent for s in e.tool_steps or []]
    assert [(s.name, s.output) for s in steps] == [("mcp__fx__add", "5")]


async def test_invalid_arguments_go_back_to_the_model(
    tmp_path: Path, sessions: McpSessions
) -> None:
    ports = RunnerPorts({"calc-m": _calc({"a": "two", "b": 3})})
    runner = AgentRunner.at(
        _home(tmp_path, "[mcp__fx__add]"), ports, None, (Servers(stdio()), sessions)
    )
    out = await runner.chat(_event(), "calc", ports)
    [text] = [d.content for d in out.deltas]
    assert text.startswith("Result: Error: invalid arguments for `mcp__fx__add`: a: 'two'")
    assert [e.outcome for e in ports.audited] == ["invalid_arguments"]
    # Only the tool the agent names is offered.
    assert [t.function.name for t in ports.steps[0].params.tools or []] == ["mcp__fx__add"]


async def test_disabled_unregistered_and_other_tenants_servers_are_not_offered(
    tmp_path: Path, sessions: McpSessions
) -> None:
    home = _home(tmp_path, "[mcp__fx, code_execution]")
    for servers in (
        Servers(),  # none registered
        Servers(stdio(enabled=False)),  # registered, not enabled
        Servers(stdio(tenant="globex")),  # another tenant's
        Servers(stdio(allowed_tools=["shout"])),  # add is not allowed
    ):
        ports = RunnerPorts({"calc-m": _calc({"a": 2, "b": 3})})
        runner = AgentRunner.at(home, ports, None, (servers, sessions))
        out = await runner.chat(_event(), "calc", ports)
        offered = [t.function.name for t in ports.steps[0].params.tools or []]
        assert "mcp__fx__add" not in offered and "code_execution" in offered
        assert out.deltas[0].content.startswith("Result: Error: there is no tool `mcp__fx__add`")
        assert [e.outcome for e in ports.audited] == ["unknown_tool"]
    # globex's admin registered it for globex: there it is offered, and runs.
    ports = RunnerPorts({"calc-m": _calc({"a": 1, "b": 1})})
    runner = AgentRunner.at(home, ports, None, (Servers(stdio(tenant="globex")), sessions))
    out = await runner.chat(_event("globex"), "calc", ports)
    assert [d.content for d in out.deltas] == ["Result: 2"]


async def test_an_mcp_call_that_needs_approval_pauses_then_resumes(
    tmp_path: Path, sessions: McpSessions
) -> None:
    from libs.events import AgentResumeRequested

    ports = RunnerPorts({"calc-m": _calc({"a": 20, "b": 22})})
    approvals = Approvals()
    server = stdio(require_approval=["add"])
    runner = AgentRunner.at(
        _home(tmp_path, "[mcp__fx]"), ports, approvals, (Servers(server), sessions)
    )
    out = await runner.chat(_event(), "calc", ports)
    [step] = out.tool_steps or []
    assert step.outcome == "awaiting_approval" and step.name == "mcp__fx__add"
    assert ports.audited == []  # nothing ran
    record, revision = approvals.records[step.approval_id or ""]
    assert record.tool == "mcp__fx__add" and json.loads(record.arguments) == {"a": 20, "b": 22}
    record.status = "approved"
    await approvals.update(record, revision)
    await runner.resume(AgentResumeRequested(ctx=record.ctx, approval_id=record.id))
    done, _ = approvals.records[record.id]
    assert (done.status, done.output) == ("completed", "Result: 42")
    assert [(e.attrs["tool"], e.outcome) for e in ports.audited] == [("mcp__fx__add", "ok")]
    # "always": every tool of the server waits; "never" (the default): none.
    assert stdio(require_approval="always").needs_approval("shout")
    assert not stdio().needs_approval("add")


async def test_mcp_call_overhead(sessions: McpSessions) -> None:
    """What one call costs through the stdio session (printed; bounded loosely)."""
    server = stdio()
    await sessions.call(server, "add", {"a": 0, "b": 0})  # started
    times = []
    for i in range(20):
        started = time.perf_counter()
        assert (await sessions.call(server, "add", {"a": i, "b": 1})).text == str(i + 1)
        times.append(time.perf_counter() - started)
    times.sort()
    print(f"MCP stdio call: p50 {times[10] * 1000:.2f} ms, max {times[-1] * 1000:.2f} ms")
    assert times[10] < 0.5
    await asyncio.sleep(0)


async def test_a_server_that_fails_mid_call_is_a_tool_error(tmp_path: Path) -> None:
    """A call whose server went away reaches the model as a tool error (outcome `error`),
    audited like any call; the turn goes on."""
    from libs.mcp_servers import tool_name
    from services.agent_runtime.mcp_tools import McpReply, McpTool, McpToolSpec
    from services.agent_runtime.tools import ToolContext, ToolRegistry

    class Broken:
        async def list_tools(self, server: McpServer) -> list[McpToolSpec]:
            return []

        async def call(self, server: McpServer, tool: str, arguments: dict[str, Any]) -> McpReply:
            raise McpUnavailable("the session ended")

    spec = McpToolSpec("add", "Add.", {"type": "object", "properties": {"a": {"type": "integer"}}})
    tool = McpTool(stdio(), spec, Broken())
    ports = RunnerPorts({})
    result = await ToolRegistry.of([tool]).call(
        call(tool_name("fx", "add"), {"a": 1}), ToolContext(ctx=CTX), ports
    )
    assert (result.outcome, result.content) == (
        "error",
        "Error: the MCP server `fx` failed: the session ended",
    )
    assert [e.outcome for e in ports.audited] == ["error"]
