"""Server-side tools (services/agent_runtime/tools.py, builtin_tools.py): typed schemas,
arguments validated before a tool runs, errors returned to the model, every call audited.
Code execution runs in the real bubblewrap sandbox (services/sandbox's executor)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from libs.audit import digest
from libs.context import RequestContext
from libs.events import (
    AuditEvent,
    FunctionCall,
    MemoryStoreRequested,
    SandboxExecReply,
    SandboxExecRequest,
    ToolCall,
)
from libs.rpc import Bus, serve, serve_alive, settled
from libs.settings import Settings
from services.agent_runtime.adapters.agent_ports import NatsAgentPorts
from services.agent_runtime.builtin_tools import builtin_tools
from services.agent_runtime.tools import MAX_RESULT_CHARS, ToolContext, ToolRegistry
from services.sandbox.adapters.bwrap import BwrapBackend
from services.sandbox.executor import execute
from tests.infra import Infra
from tests.sandbox.conftest import LIMITS

CTX = RequestContext(tenant="acme", request_id="req-tools", actor="key_1", role="developer")


class Ports:
    """The tools' ports: the real sandbox; the memory service's answers as it gives them."""

    def __init__(self, backend: BwrapBackend | None = None) -> None:
        self.backend = backend
        self.audited: list[AuditEvent] = []
        self.remembered: list[MemoryStoreRequested] = []
        self.searched: list[tuple[str, dict[str, Any]]] = []

    async def sandbox(self, request: SandboxExecRequest) -> SandboxExecReply:
        assert self.backend is not None
        return await execute(request, self.backend, LIMITS)

    async def search(
        self, ctx: RequestContext, vector_store_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.searched.append((vector_store_id, body))
        score = 0.9 if vector_store_id == "vs_b" else 0.4
        return {
            "object": "vector_store.search_results.page",
            "data": [
                {
                    "file_id": f"file_{vector_store_id}",
                    "filename": "notes.md",
                    "score": score,
                    "content": [{"type": "text", "text": f"passage from {vector_store_id}"}],
                }
            ],
        }

    async def remember(self, event: MemoryStoreRequested) -> None:
        self.remembered.append(event)

    async def audit(self, event: AuditEvent) -> None:
        self.audited.append(event)


def _call(name: str, arguments: Any) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(id="call_1", function=FunctionCall(name=name, arguments=text))


def test_definitions_are_the_arguments_json_schema() -> None:
    registry = ToolRegistry.of(builtin_tools())
    defs = {d.function.name: d.function for d in registry.definitions()}
    assert set(defs) == {"code_execution", "file_search", "memory_write"}
    code = defs["code_execution"].parameters
    assert code["required"] == ["code"]
    assert code["properties"]["language"]["enum"] == ["python", "bash"]
    assert code["additionalProperties"] is False
    assert [d.function.name for d in registry.definitions(["memory_write", "nope"])] == [
        "memory_write"
    ]
    with pytest.raises(ValueError, match="registered already"):
        registry.add(builtin_tools()[0])


async def test_code_runs_in_the_sandbox_and_is_audited(backend: BwrapBackend) -> None:
    ports = Ports(backend)
    registry = ToolRegistry.of(builtin_tools())
    arguments = {"code": "print(sum(range(101)))"}
    result = await registry.call(_call("code_execution", arguments), ToolContext(ctx=CTX), ports)
    assert result.outcome == "ok", result.content
    out = json.loads(result.content)
    assert out["status"] == "ok" and out["stdout"].strip() == "5050"
    assert result.message().role == "tool" and result.message().tool_call_id == "call_1"
    [event] = ports.audited
    assert (event.action, event.kind, event.outcome) == ("tool.call", "runtime", "ok")
    assert event.digests == {"arguments": digest(json.dumps(arguments))}
    assert event.attrs["tool"] == "code_execution" and event.request_id == "req-tools"
    assert "5050" not in event.model_dump_json() and "range" not in event.model_dump_json()


async def test_a_failing_program_is_a_result_not_an_error(backend: BwrapBackend) -> None:
    ports = Ports(backend)
    registry = ToolRegistry.of(builtin_tools())
    call = _call("code_execution", {"language": "bash", "code": "echo oops >&2; exit 3"})
    result = await registry.call(call, ToolContext(ctx=CTX), ports)
    out = json.loads(result.content)
    assert result.outcome == "ok" and out["status"] == "error" and out["exit_code"] == 3
    assert out["stderr"].strip() == "oops"


@pytest.mark.parametrize(
    ("name", "arguments", "outcome", "said"),
    [
        ("code_execution", "{not json", "invalid_arguments", "not valid JSON"),
        ("code_execution", {"code": ""}, "invalid_arguments", "code:"),
        ("code_execution", {"code": "1", "language": "ruby"}, "invalid_arguments", "language:"),
        ("code_execution", {"code": "1", "rm": True}, "invalid_arguments", "rm:"),
        ("file_search", {"query": "x", "max_num_results": 99}, "invalid_arguments", "max_num"),
        ("shell", {}, "unknown_tool", "no tool `shell`"),
    ],
)
async def test_bad_calls_go_back_to_the_model_and_nothing_runs(
    name: str, arguments: Any, outcome: str, said: str
) -> None:
    ports = Ports()  # no sandbox: nothing may run
    result = await ToolRegistry.of(builtin_tools()).call(
        _call(name, arguments), ToolContext(ctx=CTX, vector_store_ids=("vs_a",)), ports
    )
    assert result.outcome == outcome and result.content.startswith("Error:")
    assert said in result.content
    assert ports.searched == [] and ports.audited[0].outcome == outcome


async def test_file_search_merges_the_agents_stores_best_first() -> None:
    ports = Ports()
    registry = ToolRegistry.of(builtin_tools())
    context = ToolContext(ctx=CTX, vector_store_ids=("vs_a", "vs_b"))
    result = await registry.call(_call("file_search", {"query": "refunds"}), context, ports)
    hits = json.loads(result.content)["results"]
    assert [h["file_id"] for h in hits] == ["file_vs_b", "file_vs_a"]
    assert hits[0]["text"] == "passage from vs_b"
    assert ports.searched == [
        ("vs_a", {"query": "refunds", "max_num_results": 5}),
        ("vs_b", {"query": "refunds", "max_num_results": 5}),
    ]
    # An agent without stores: a tool error, said to the model.
    alone = await registry.call(_call("file_search", {"query": "x"}), ToolContext(ctx=CTX), ports)
    assert alone.outcome == "error" and "no vector store" in alone.content


async def test_memory_write_hands_the_fact_to_memory() -> None:
    ports = Ports()
    registry = ToolRegistry.of(builtin_tools())
    call = _call("memory_write", {"text": "Prefers metric units."})
    result = await registry.call(call, ToolContext(ctx=CTX, user="u1"), ports)
    assert result.outcome == "ok"
    [event] = ports.remembered
    assert event.user == "u1" and event.messages[0].content == "Prefers metric units."
    nobody = await registry.call(call, ToolContext(ctx=CTX), ports)
    assert nobody.outcome == "error" and len(ports.remembered) == 1


async def test_a_huge_result_is_clipped(backend: BwrapBackend) -> None:
    ports = Ports(backend)
    call = _call("code_execution", {"code": "print('x' * 50000)"})
    result = await ToolRegistry.of(builtin_tools()).call(call, ToolContext(ctx=CTX), ports)
    assert len(result.content) < MAX_RESULT_CHARS + 100 and "more characters left out" in (
        result.content
    )


async def test_a_sandbox_lost_mid_run_is_a_tool_error_for_the_model(
    services: Infra, nc: NatsClient, inprocess_settings: Settings
) -> None:
    """The runtime's sandbox port on the real bus: the replica that took the program dies
    with it (its connection gone, as `kill -9` leaves it); the model gets a tool error
    (`sandbox_lost`) within seconds, and the program was taken once."""
    settings = inprocess_settings.model_copy(update={"sandbox_alive_s": 0.5})
    replica = await nats.connect(services.nats_url)
    alive = settings.subjects.sandbox_alive("r1")
    taken: list[str] = []

    async def hangs(request: SandboxExecRequest) -> SandboxExecReply:
        taken.append(request.code)
        await asyncio.sleep(3600)
        return SandboxExecReply(status="ok")

    await serve_alive(replica, alive)
    await serve(
        replica,
        settings.subjects.sandbox_exec,
        SandboxExecRequest,
        hangs,
        queue="sandbox",
        concurrent=True,
        accepted=alive,
    )
    await settled(replica)
    runtime = NatsAgentPorts(SimpleNamespace(bus=Bus(nc, settings)), None)  # type: ignore[arg-type]
    ports = Ports()
    ports.sandbox = runtime.sandbox  # type: ignore[method-assign]
    call = _call("code_execution", {"code": "import time; time.sleep(30)"})
    running = asyncio.ensure_future(
        ToolRegistry.of(builtin_tools()).call(call, ToolContext(ctx=CTX), ports)
    )
    while not taken:
        await asyncio.sleep(0.01)
    await replica.close()
    died = asyncio.get_running_loop().time()
    result = await running
    assert asyncio.get_running_loop().time() - died < 3.0
    assert result.outcome == "error" and result.content.startswith("Error:"), result
    assert "was lost" in result.content and "not run again" in result.content, result.content
    assert taken == ["import time; time.sleep(30)"]
