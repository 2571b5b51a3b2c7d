"""bench.peers' parts, untimed: the stand-in engine as an HTTP process, and the table."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson

from bench.gateway import chat_body
from bench.loadgen import Result, Sample, run_clients
from bench.peers import DEFAULT, ENGINE, LITELLM, OPEN, Side, rss_mib, standin_engine, table
from bench.standin import MODEL


def sse_events(raw: bytes) -> list[bytes]:
    return [line[6:] for line in raw.split(b"\n\n") if line.startswith(b"data: ")]


def test_the_stand_in_engine_serves_sixteen_chunks_then_done(tmp_path: Path) -> None:
    with standin_engine(tmp_path) as (proc, port):
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        r = httpx.post(url, json=chat_body(MODEL), timeout=10)
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        events = sse_events(r.content)
        assert events[-1] == b"[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        texts = [c["choices"][0]["delta"].get("content") for c in chunks]
        assert [t for t in texts if t] == [f"w{i} " for i in range(16)]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}

        whole = httpx.post(url, json={**chat_body(MODEL), "stream": False}, timeout=10).json()
        assert whole["choices"][0]["message"]["content"] == "".join(f"w{i} " for i in range(16))
        assert whole["usage"]["completion_tokens"] == 16

        bad = httpx.post(url, content=b"{not json", timeout=10)
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_json"

        # The bench's own load client reads its stream: three requests, no errors.
        result = asyncio.run(run_clients("127.0.0.1", port, "-", chat_body(MODEL), 1, requests=3))
        assert (len(result.samples), result.errors) == (3, 0)
        assert all(0 < s.ttft <= s.total for s in result.samples)
        assert rss_mib(proc.pid) > 10


def result(ttft_ms: float, total_ms: float, count: int, seconds: float) -> Result:
    samples = [Sample(ttft=ttft_ms / 1000, total=total_ms / 1000)] * count
    return Result(samples=samples, elapsed=seconds)


def test_the_table_puts_each_side_against_litellm() -> None:
    sides = [
        Side(ENGINE, result(0.5, 1, 100, 1), result(2, 4, 2000, 1), None, 40),
        Side(LITELLM, result(16, 30, 100, 3), result(300, 400, 25, 1), 400, 400),
        Side(OPEN, result(2, 4, 100, 1), result(20, 25, 450, 1), 100, 900),
        Side(DEFAULT, result(15, 20, 100, 2), result(100, 120, 80, 1), 120, 950),
    ]
    out = table(sides)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines()[-8:]}
    assert "| 2.00 | 0.12x | 450 | 18.00x | 100 | 0.25x | 900 |" in rows[OPEN]
    assert "| 16.00 | 1.00x | 25 | 1.00x | 400 | 1.00x | 400 |" in rows[LITELLM]
    assert "| 0.50 | 0.031x | 2000 | 80.00x | - | - | 40 |" in rows[ENGINE]
    assert "| 15.00 | 0.94x | 80 | 3.20x | 120 | 0.30x | 950 |" in rows[DEFAULT]
    assert out.splitlines()[-1].endswith("0.12x LiteLLM's (target <= 0.15: met)")
    assert (
        "| Enclave, default policy | 10 | 80 | 0 | 100.00 | 100.00 | 120.00 | 120.00 | 80 |" in out
    )


def test_the_table_without_litellm_has_no_ratios() -> None:
    out = table([Side(OPEN, result(2, 4, 10, 1), result(20, 25, 45, 1), 100, 900)])
    assert "| Enclave, screening off | 2.00 | - | 45 | - | 100 | - | 900 |" in out
    assert "target" not in out


def test_the_openai_compat_side_routes_to_the_stand_in_over_http() -> None:
    """The registry `bench.peers` adds: a pool on the stand-in's HTTP, the model on it."""
    import yaml

    from bench.peers import COMPAT_MODEL, compat_registry
    from services.inference_router.registry import parse_registry, provider_of
    from tests.infra import REPO

    doc = yaml.safe_load((REPO / "deploy" / "models.yaml").read_text())
    extra = compat_registry(8123)
    doc["pools"].update(extra["pools"])
    doc["models"].extend(extra["models"])
    registry = parse_registry(doc)
    route = registry.resolve(COMPAT_MODEL, "bench", "chat")
    assert not isinstance(route, Exception) and getattr(route, "pool", "") == "openai-http"
    pool = registry.pools["openai-http"]
    assert pool["engine"] == "openai_compat" and pool["model"] == MODEL
    assert pool["base_url"] == "http://127.0.0.1:8123/v1"
    assert provider_of(pool) is None  # a server of ours: no grant needed
