"""The MCP server registry end to end: a tenant's admin registers a server through the
gateway's admin API (SQL, audited), the runtime's reader (adapters/sql_mcp_servers.py)
sees it enabled for that tenant only, and an agent turn calls its tool; disabled or
deleted, its tools are gone within the reader's refresh. And the runtime its bootstrap
builds, on the real NATS, runs an agent turn that calls a server registered in SQL."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
from nats.aio.client import Client as NatsClient

from libs.db.engine import make_engine, migrate_async
from libs.events import (
    Delta,
    FunctionCall,
    GenerateAccepted,
    GenerateRequest,
    ToolCall,
    TurnEvent,
    Usage,
)
from libs.mcp_servers import McpServerConfig
from libs.rpc import ReplyRouter
from libs.service import running
from libs.settings import Settings
from libs.tool_calls import call_deltas
from services.agent_runtime.adapters.mcp_client import McpSessions
from services.agent_runtime.adapters.sql_mcp_servers import SqlMcpServers
from services.agent_runtime.agent_runner import AgentRunner
from services.agent_runtime.bootstrap import Runtime
from services.agent_runtime.bootstrap import build as build_runtime
from services.gateway.adapters.sql_keys import create_key
from services.gateway.adapters.sql_mcp_servers import put_mcp_server
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.hot_path import HotPath
from services.sandbox.adapters.bwrap import BwrapBackend
from tests.agent_runtime.test_agent_runner import RunnerPorts
from tests.agent_runtime.test_agents_inprocess import StandIns, agent_turn
from tests.agent_runtime.test_mcp_tools import FIXTURE, _calc, _event, _home
from tests.infra import audit_events


async def test_an_admin_registers_a_server_and_an_agent_calls_it(
    nc: NatsClient, inprocess_settings: Settings, tmp_path: Path, sessions: McpSessions
) -> None:
    settings = inprocess_settings
    tenant, other = "acme", "globex-" + secrets.token_hex(3)
    gw = build(settings)
    app = HotPath(gw, create_fastapi(gw))
    await gw.start()
    tap = await audit_events(nc, settings.subjects.audit_all)
    audited = tap.events
    try:
        _, admin = await create_key(gw.db, tenant, "admin")
        _, dev = await create_key(gw.db, tenant, "developer")
        _, other_admin = await create_key(gw.db, other, "admin")
        auth = {"Authorization": f"Bearer {admin}"}
        body = {
            "transport": "stdio",
            "command": "python",
            "args": ["-c", FIXTURE.read_text()],
            "allowed_tools": ["add"],
            "enabled": True,
        }
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            r = await http.put("/v1/admin/mcp_servers/fx", headers=auth, json=body)
            assert r.status_code == 201, r.text
            assert r.json()["allowed_tools"] == ["add"] and r.json()["enabled"] is True
            r = await http.put(
                "/v1/admin/mcp_servers/fx",
                headers={"Authorization": f"Bearer {dev}"},
                json=body,
            )
            assert r.status_code == 403
            bad = {"transport": "streamable_http", "command": "x"}
            r = await http.put("/v1/admin/mcp_servers/web", headers=auth, json=bad)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"
            r = await http.put("/v1/admin/mcp_servers/Bad.Name", headers=auth, json=body)
            assert r.status_code == 400
            r = await http.get(
                "/v1/admin/mcp_servers", headers={"Authorization": f"Bearer {other_admin}"}
            )
            assert r.json()["data"] == []  # another tenant does not see it
            r = await http.get("/v1/admin/mcp_servers/fx", headers=auth)
            assert r.status_code == 200 and r.json()["transport"] == "stdio"

            reader = SqlMcpServers(gw.db, refresh_s=0.0)
            assert [s.name for s in await reader.servers(tenant)] == ["fx"]
            assert await reader.servers(other) == []
            home = _home(tmp_path, "[mcp__fx]")
            ports = RunnerPorts({"calc-m": _calc({"a": 2, "b": 3})})
            runner = AgentRunner.at(home, ports, None, (reader, sessions))
            out = await runner.chat(_event(), "calc", ports)
            assert [d.content for d in out.deltas] == ["Result: 5"]
            offered = [t.function.name for t in ports.steps[0].params.tools or []]
            assert offered == ["mcp__fx__add"]

            r = await http.put(
                "/v1/admin/mcp_servers/fx", headers=auth, json={**body, "enabled": False}
            )
            assert r.status_code == 200
            assert await reader.servers(tenant) == []
            r = await http.delete("/v1/admin/mcp_servers/fx", headers=auth)
            assert r.status_code == 200 and r.json()["deleted"] is True
            r = await http.delete("/v1/admin/mcp_servers/fx", headers=auth)
            assert r.status_code == 404
        for _ in range(50):
            if len([e for e in audited if e.action.startswith("admin.mcp_servers")]) >= 6:
                break
            await asyncio.sleep(0.05)
        actions = [(e.action, e.outcome) for e in audited if e.action.startswith("admin.mcp")]
        assert actions == [
            ("admin.mcp_servers.put", "ok"),
            ("admin.mcp_servers.list", "ok"),
            ("admin.mcp_servers.get", "ok"),
            ("admin.mcp_servers.put", "ok"),
            ("admin.mcp_servers.delete", "ok"),
            ("admin.mcp_servers.delete", "not_found"),
        ], actions
    finally:
        await tap.close()
        await gw.stop()


class McpStandIns(StandIns):
    """The in-process agent test's guardrails, router and worker; the model calls
    mcp__fx__add once, then repeats the result."""

    async def generate(self, request: GenerateRequest) -> GenerateAccepted:
        self.generated.append(request)
        said = request.messages[-1]
        if said.role == "user":
            call = ToolCall(
                id="m1", function=FunctionCall(name="mcp__fx__add", arguments='{"a": 4, "b": 5}')
            )
            delta = Delta(tool_calls=call_deltas([call], 0), finish_reason="tool_calls")
        else:
            delta = Delta(content=f"Sum: {said.content}", finish_reason="stop")
        event = TurnEvent(deltas=[delta], usage=Usage(prompt_tokens=10), done=True)

        async def stream() -> None:
            await self.nc.publish(request.deltas_subject, event.model_dump_json().encode())

        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(stream()))
        return GenerateAccepted(accepted=True, worker="w1", timeout_s=request.timeout_s)


async def test_the_runtime_its_bootstrap_builds_calls_a_registered_server(
    nc: NatsClient, inprocess_settings: Settings, backend: BwrapBackend
) -> None:
    """The wiring: the runtime's bootstrap reads the tenant's servers from the SQL the
    gateway writes, and an agent turn from the work queue calls the stdio server."""
    settings = inprocess_settings
    await migrate_async(settings)
    engine = make_engine(settings.sqlalchemy_url)
    config = McpServerConfig(
        transport="stdio", command="python", args=["-c", FIXTURE.read_text()], enabled=True
    )
    await put_mcp_server(engine, "acme", "fx", config)
    await engine.dispose()
    agents = settings.home / "agents" / "acme"
    agents.mkdir(parents=True)
    (agents / "calc.yaml").write_text("model: calc-m\ntools: [mcp__fx]\n")
    stand_ins = McpStandIns(nc, settings, backend)
    await stand_ins.start()
    audited = (await audit_events(nc, settings.subjects.audit_all)).events
    client = await ReplyRouter(nc, settings.subjects.chat_stream("gw1", "")).start()
    async with running(settings, "agent_runtime", build_runtime) as service:
        assert isinstance(service, Runtime)
        _, text = await agent_turn(nc, settings, client, "agent:calc", "4 + 5?")
        assert text == "Sum: 9"
        for _ in range(200):
            if any(e.action == "tool.call" for e in audited):
                break
            await asyncio.sleep(0.02)
        calls = [(e.attrs["tool"], e.outcome) for e in audited if e.action == "tool.call"]
        assert calls == [("mcp__fx__add", "ok")]
