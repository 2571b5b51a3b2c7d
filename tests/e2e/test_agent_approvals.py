"""Agents through the Responses API, and approvals, end to end: the official openai SDK
and plain HTTP against the real gateway, runtime, guardrails, sandbox, router and worker,
as processes.

The scripted model is the echo pool with `tool_results`: the user's `<tool_call>` block is
its call of `code_execution`, which the real sandbox service runs; then it answers with
the tool's result. An agent that lists the tool under `approvals` pauses there: the run is
saved in the JetStream KV bucket and its turn acked; an approver's decision, made while
the runtime is down, resumes the run once a runtime is back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import _platform
from tests.infra import Infra, Platform

MODEL = "enclave-echo-tools"
CODE = '<tool_call>{"name": "code_execution", "arguments": {"code": "print(6 * 7)"}}</tool_call>'


@pytest.fixture(scope="module")
def plat(services: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    plat = _platform(services, tmp_path_factory.mktemp("approvals-platform"))
    folder = plat.home / "agents" / "acme"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calc.yaml").write_text(
        f"model: {MODEL}\ntools: [code_execution]\nlimits: {{max_steps: 3}}\n"
    )
    (folder / "guarded.yaml").write_text(
        f"model: {MODEL}\ntools: [code_execution]\napprovals: [code_execution]\n"
        "limits: {max_steps: 3}\n"
    )
    (folder / "helper.yaml").write_text(f"model: {MODEL}\ninstructions: Be helpful.\n")
    (folder / "mcpcalc.yaml").write_text(
        f"model: {MODEL}\ntools: [mcp__fx]\nlimits: {{max_steps: 3}}\n"
    )
    try:
        plat.start("router", "inference_router")
        plat.start("worker-echo-tools", "worker", "echo-tools")
        plat.start("guardrails", "guardrails")
        plat.start("sandbox", "sandbox")
        plat.start("runtime", "agent_runtime")
        plat.start("gateway", "gateway")
        plat.wait_ready()
        plat.wait_model(MODEL)
        yield plat
    finally:
        plat.stop_all()


@pytest.fixture(scope="module")
def client(plat: Platform) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=plat.base_url + "/v1",
        api_key=plat.admin_key,
        _strict_response_validation=True,
        max_retries=0,
        timeout=300,
    )


def api(
    plat: Platform, method: str, path: str, key: str | None = None, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or plat.admin_key}"}
    return httpx.request(method, plat.base_url + path, headers=headers, timeout=60, **kw)


def wait_status(plat: Platform, approval: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = api(plat, "GET", f"/v1/approvals/{approval}").json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"approval {approval} never ended:\n{plat.logs()[-4000:]}")


def test_an_agent_streams_its_tool_results(client: openai.OpenAI) -> None:
    """The agent's sandbox call and its result are an `mcp_call` item of the stream,
    before the answer, which the model drew from that result."""
    events = list(client.responses.create(model="agent:calc", input=CODE, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    calls = [e.item for e in events if e.type == "response.output_item.done"]
    assert [c.type for c in calls] == ["mcp_call", "message"]
    assert calls[0].type == "mcp_call" and calls[0].name == "code_execution"
    assert calls[0].server_label == "enclave" and '"stdout": "42\\n"' in (calls[0].output or "")
    assert "response.mcp_call.completed" in kinds
    final = events[-1].response  # type: ignore[union-attr]
    assert '"stdout": "42\\n"' in final.output_text


def test_a_paused_run_survives_a_runtime_restart_and_resumes(
    plat: Platform, client: openai.OpenAI
) -> None:
    reply = client.chat.completions.create(
        model="agent:guarded", messages=[{"role": "user", "content": CODE}]
    )
    text = reply.choices[0].message.content or ""
    found = re.search(r"approval `(apr_[0-9a-f]{24})`", text)
    assert found, text
    approval = found.group(1)
    pending = api(plat, "GET", "/v1/approvals", params={"status": "pending"}).json()["data"]
    [waiting] = [a for a in pending if a["id"] == approval]
    assert (waiting["tool"], waiting["agent"], waiting["status"]) == (
        "code_execution",
        "guarded",
        "pending",
    )
    assert "print(6 * 7)" in waiting["arguments"] and "state" not in waiting

    # Not every role may decide, and not for another tenant.
    user_key = plat.create_key("acme", "user")
    assert (
        api(plat, "POST", f"/v1/approvals/{approval}", user_key, json={"approve": True}).status_code
        == 403
    )
    other = plat.create_key("globex", "admin")
    assert api(plat, "GET", f"/v1/approvals/{approval}", other).status_code == 404

    # The runtime goes away; the decision waits on the bus; a new runtime resumes the run.
    plat.stop("runtime")
    decided = api(plat, "POST", f"/v1/approvals/{approval}", json={"approve": True})
    assert decided.status_code == 200, decided.text
    assert decided.json()["status"] == "approved"
    again = api(plat, "POST", f"/v1/approvals/{approval}", json={"approve": False})
    assert again.status_code == 409
    plat.start("runtime", "agent_runtime")
    done = wait_status(plat, approval)
    assert done["status"] == "completed", done
    assert '"stdout": "42\\n"' in done["output"] and done["decided_by"]


def test_a_rejected_call_is_not_run_and_the_model_is_told(
    plat: Platform, client: openai.OpenAI
) -> None:
    reply = client.responses.create(model="agent:guarded", input=CODE)
    [request] = [i for i in reply.output if i.type == "mcp_approval_request"]
    assert request.name == "code_execution" and request.id.startswith("apr_")
    assert "waiting for an approval" in reply.output_text
    decided = api(
        plat, "POST", f"/v1/approvals/{request.id}", json={"approve": False, "reason": "no"}
    )
    assert decided.status_code == 200 and decided.json()["status"] == "rejected"
    done = wait_status(plat, request.id)
    assert done["status"] == "completed" and "an approver rejected it" in done["output"]
    assert api(plat, "GET", "/v1/approvals/apr_" + "0" * 24).status_code == 404


MCP_FIXTURE = Path(__file__).parents[1] / "agent_runtime" / "mcp_fixture_server.py"


def test_an_mcp_tool_that_needs_approval_runs_once_approved(
    plat: Platform, client: openai.OpenAI
) -> None:
    """An admin registers a stdio MCP server through the API, its `add` under approval; an
    agent that names the server calls it; the call waits until an approver approves it
    through /v1/approvals; then the runtime runs it in the sandboxed server and the answer
    carries its result."""
    body = {
        "transport": "stdio",
        "command": "python",
        "args": ["-c", MCP_FIXTURE.read_text()],
        "require_approval": ["add"],
        "enabled": True,
    }
    r = api(plat, "PUT", "/v1/admin/mcp_servers/fx", json=body)
    assert r.status_code == 201, r.text
    try:
        call = '<tool_call>{"name": "mcp__fx__add", "arguments": {"a": 20, "b": 22}}</tool_call>'
        reply = client.responses.create(model="agent:mcpcalc", input=call)
        [request] = [i for i in reply.output if i.type == "mcp_approval_request"]
        assert (request.name, request.server_label) == ("mcp__fx__add", "fx"), reply.output
        assert '"a": 20' in request.arguments
        decided = api(plat, "POST", f"/v1/approvals/{request.id}", json={"approve": True})
        assert decided.status_code == 200, decided.text
        done = wait_status(plat, request.id)
        assert done["status"] == "completed", done
        assert "42" in done["output"], done
    finally:
        api(plat, "DELETE", "/v1/admin/mcp_servers/fx")


SKILL = """---
name: unit-convert
description: Convert between metric and imperial units.
---
Multiply miles by 1.609 to get kilometres.
"""


def test_skills_are_managed_through_the_api(plat: Platform) -> None:
    """Upload a SKILL.md folder, list and read it, refuse a malformed one naming the file
    and the problem, delete; a user key may not."""
    files = [{"path": "SKILL.md", "content": SKILL}, {"path": "table.md", "content": "1 mi"}]
    up = api(plat, "POST", "/v1/skills", json={"files": files})
    assert up.status_code == 200, up.text
    assert up.json()["name"] == "unit-convert" and up.json()["resources"] == ["table.md"]
    listed = api(plat, "GET", "/v1/skills").json()
    assert [s["name"] for s in listed["data"]] == ["unit-convert"] and listed["errors"] == []
    got = api(plat, "GET", "/v1/skills/unit-convert").json()
    assert "1.609" in got["instructions"]
    bad = [{"path": "SKILL.md", "content": SKILL.replace("description: Convert", "summary: x")}]
    refused = api(plat, "POST", "/v1/skills", json={"files": bad})
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert message.startswith("skills/acme/unit-convert/SKILL.md: unknown front matter key")
    user_key = plat.create_key("acme", "user")
    assert api(plat, "GET", "/v1/skills", user_key).status_code == 403
    assert api(plat, "DELETE", "/v1/skills/unit-convert").status_code == 200
    assert api(plat, "GET", "/v1/skills/unit-convert").status_code == 404


def test_an_approval_answered_in_the_responses_api(plat: Platform, client: openai.OpenAI) -> None:
    """OpenAI's way: the `mcp_approval_request` answered by an `mcp_approval_response`
    item; the new response is the resumed run's answer. A developer may not approve."""
    first = client.responses.create(model="agent:guarded", input=CODE)
    [request] = [i for i in first.output if i.type == "mcp_approval_request"]
    developer = openai.OpenAI(
        base_url=plat.base_url + "/v1",
        api_key=plat.create_key("acme", "developer"),
        max_retries=0,
        timeout=60,
    )
    answer: Any = {"type": "mcp_approval_response", "approval_request_id": request.id}
    with pytest.raises(openai.PermissionDeniedError):
        developer.responses.create(
            model="agent:guarded",
            previous_response_id=first.id,
            input=[{**answer, "approve": True}],
        )
    events = list(
        client.responses.create(
            model="agent:guarded",
            previous_response_id=first.id,
            input=[{**answer, "approve": True}],
            stream=True,
        )
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert events[-1].type == "response.completed"
    assert '"stdout": "42\\n"' in final.output_text
    assert client.responses.retrieve(final.id).output_text == final.output_text


async def test_the_agents_sdk_runs_a_configured_agent_with_its_own_function_tool(
    plat: Platform,
) -> None:
    """`model: agent:helper` through the OpenAI Agents SDK, unchanged: the configured agent
    (its model, instructions and limits) calls the SDK's function tool, which the SDK runs,
    and answers from its result."""
    agents = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    ran: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        ran.append(city)
        return f"Sunny in {city}"

    client = AsyncOpenAI(base_url=plat.base_url + "/v1", api_key=plat.admin_key, max_retries=0)
    sdk_agent = agents.Agent(
        name="helper",
        tools=[get_weather],
        model=agents.OpenAIResponsesModel(model="agent:helper", openai_client=client),
    )
    scripted = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    result = await agents.Runner.run(sdk_agent, scripted)
    assert ran == ["Oslo"] and result.final_output == "Sunny in Oslo"
