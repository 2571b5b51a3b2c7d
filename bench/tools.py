"""Tool-call round trip: what one server-side tool call adds to an agent's turn,
`python -m bench tools`.

Through the whole platform (gateway, runtime, router, a worker, the sandbox service), with
the scripted `echo-tools` engine (it repeats the user's message, so a `<tool_call>` block in
the message is the model's call; a conversation that ends in a tool result gets that result
back as its answer), one client, one request at a time, the rows interleaved so that they
share whatever else loads the machine. An agent (`agent:bench`, the engine, the built-in
tools `memory_write` and `code_execution`) gets:

- a plain message: one step, one generation (the agent turn without a tool);
- a `memory_write` call: the call parsed, its arguments validated, the tool run (a
  JetStream publish to the memory stream), its result screened as context, the call
  audited, then a second generation that answers with the result;
- a `code_execution` call: the same with `print(6 * 7)` run in the sandbox service
  (bubblewrap, a warm sandbox), whose own start-to-result time `python -m bench sandbox`
  reports.

The tool round trip is each row's P50 minus the plain row's P50: the runtime's work for the
call plus one more generation step of the (instant) engine. Both policies: screening off
(what the runtime itself costs) and the default policy (tool results screened as context,
the answer screened as output).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import httpx

from bench.gateway import running_platform, set_global_policy

N = int(os.environ.get("BENCH_TOOLS_N", "60"))
POOL = {
    "engine": "instant",
    "echo": True,
    "tool_results": True,
    "chunk_chars": 64,
    "delay_ms": 0,
}
MODEL = "enclave-echo-tools"
AGENT = f"model: {MODEL}\ntools: [memory_write, code_execution]\nlimits: {{max_steps: 3}}\n"


def _call(name: str, arguments: dict[str, str]) -> str:
    call = json.dumps({"name": name, "arguments": arguments})
    return f"<tool_call>{call}</tool_call>"


CASES = {
    "agent turn, no tool (1 generation)": "What is the capital of France?",
    "memory_write call + answer (2 generations)": _call("memory_write", {"text": "I like tea."}),
    "code_execution call in the sandbox + answer": _call("code_execution", {"code": "print(6*7)"}),
}
EXPECT = {
    "agent turn, no tool (1 generation)": "What is the capital of France?",
    "memory_write call + answer (2 generations)": "Saved to memory.",
    "code_execution call in the sandbox + answer": "42",
}


def _write_agent(home: Path) -> None:
    folder = home / "agents" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.yaml").write_text(AGENT)


async def _one(http: httpx.AsyncClient, key: str, content: str) -> tuple[float, str]:
    body = {
        "model": "agent:bench",
        "messages": [{"role": "user", "content": content}],
        "user": "bench-user",
    }
    start = time.perf_counter()
    r = await http.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    took = (time.perf_counter() - start) * 1000
    r.raise_for_status()
    return took, r.json()["choices"][0]["message"]["content"] or ""


async def _measure(base_url: str, key: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in CASES}
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        for name, content in CASES.items():  # warm-up, and the answers are checked
            _, answer = await _one(http, key, content)
            if EXPECT[name] not in answer:
                raise RuntimeError(f"{name}: unexpected answer {answer!r}")
        for _ in range(N):
            for name, content in CASES.items():
                took, _ = await _one(http, key, content)
                times[name].append(took)
    return times


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    model = {"id": MODEL, "kind": "chat", "pool": "echo-tools"}
    registry = {"pools": {"echo-tools": POOL}, "models": [model]}
    extra = (("worker-echo-tools", "worker", "echo-tools"), ("sandbox", "sandbox", None))
    results = {}
    with running_platform(extra, (MODEL,), registry, prepare=_write_agent) as (plat, _):
        results["screening off"] = asyncio.run(_measure(plat.base_url, plat.admin_key))
        set_global_policy(plat, None)
        results["default policy"] = asyncio.run(_measure(plat.base_url, plat.admin_key))
    print(
        f"tool-call round trip through the platform: agent:bench on the instant echo-tools "
        f"engine, 1 client, {N} turns per row (interleaved), {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'policy':<15} {'turn':<46} {'P50 ms':>8} {'P95 ms':>8} {'+P50 ms':>8}")
    for policy, times in results.items():
        plain = statistics.median(times[next(iter(CASES))])
        for i, (name, values) in enumerate(times.items()):
            p50 = statistics.median(values)
            added = f"{p50 - plain:>8.1f}" if i else ""
            print(f"{policy:<15} {name:<46} {p50:>8.1f} {_p(values, 0.95):>8.1f} {added:>8}")


if __name__ == "__main__":
    main()
