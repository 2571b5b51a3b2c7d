"""One chat with retrieval, memory and output screening on, through the real platform (one
process per service, spans written as JSON lines): every service's spans are in the one
trace the client started, and every span's parent is a span of that trace."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.conftest import _platform
from tests.infra import Infra, Platform

CLIENT_TRACE = "5af7183fb1d4cf5f27e2a1d3c6b7e901"
CLIENT_SPAN = "0a1b2c3d4e5f6071"
HANDBOOK = b"""# Orbital handbook

## Security
The badge office is on floor 3 of the Zephyr building; lost badges cost 25 euros.
"""


def trace_spans(home: Path, trace_id: str) -> list[dict[str, Any]]:
    spans = []
    for path in (home / "traces").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                span = json.loads(line)
            except ValueError:
                continue  # empty, or a line its process is writing now
            if span["trace_id"] == trace_id:
                spans.append(span)
    return spans


def wanted_hops(spans: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(s["service"], s["name"]) for s in spans}


def complete(spans: list[dict[str, Any]]) -> bool:
    """Every hop is there, and so is the turn's own audit append (the gateway's comes
    first: waiting for the hops alone raced the runtime's append, seen once in a run)."""
    turns = {s["span_id"] for s in spans if s["name"] == "turn"}
    under_turn = any(s["name"] == "audit.append" and s["parent_id"] in turns for s in spans)
    return wanted_hops(spans) >= HOPS and under_turn


# (service, span): the hops a chat with retrieval, memory and output screening passes.
HOPS = {
    ("enclave-gateway", "POST /v1/chat/completions"),
    ("enclave-agent_runtime", "turn"),
    ("enclave-guardrails", "guardrails.input"),
    ("enclave-memory", "memory.retrieve"),
    ("enclave-guardrails", "guardrails.context"),
    ("enclave-inference_router", "inference.route"),
    ("enclave-worker-instant", "generate"),
    ("enclave-guardrails", "guardrails.output"),
    ("enclave-memory", "memory.store"),
    ("enclave-audit", "audit.append"),
}


def start(plat: Platform) -> None:
    plat.launch(["instant"], ["memory", "audit"], ["enclave-instant"])


def test_one_chat_is_one_trace_through_every_service(services: Infra, tmp_path: Path) -> None:
    plat = _platform(
        services,
        tmp_path,
        # No query rewrite (no smollm2 here); the router asked on every turn, not cached.
        ENCLAVE_MEMORY_REWRITE_QUERY="false",
        ENCLAVE_ROUTE_CACHE_S="0",
    )
    try:
        start(plat)
        client = openai.OpenAI(base_url=plat.base_url + "/v1", api_key=plat.admin_key)
        f = client.files.create(file=("handbook.md", HANDBOOK), purpose="assistants")
        client.vector_stores.create(name="kb", file_ids=[f.id])
        r = httpx.post(
            plat.base_url + "/v1/chat/completions",
            headers={
                "Authorization": f"Bearer {plat.admin_key}",
                "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
            },
            json={
                "model": "enclave-instant",
                "messages": [{"role": "user", "content": "Where is the badge office?"}],
                "rag": {"enabled": True, "collection": "kb"},
                "memory": {"enabled": True, "conversation_id": "c-trace"},
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json()["citations"], r.text  # retrieval answered
        request_id = r.headers["x-request-id"]

        # Spans reach their files when they end: the store and the audit append come last.
        deadline = time.monotonic() + 180
        spans = trace_spans(tmp_path, CLIENT_TRACE)
        while not complete(spans) and time.monotonic() < deadline:
            time.sleep(0.5)
            spans = trace_spans(tmp_path, CLIENT_TRACE)
        assert wanted_hops(spans) >= HOPS, (HOPS - wanted_hops(spans), plat.logs()[-3000:])
    finally:
        plat.stop_all()

    # Parent-child links intact: each span's parent is the client's span or one of the
    # trace's own spans, and the tree hangs from the gateway's span.
    ids = {s["span_id"] for s in spans}
    tree = sorted((s["service"], s["name"], s["span_id"], s["parent_id"]) for s in spans)
    for span in spans:
        assert span["parent_id"] in ids | {CLIENT_SPAN}, (span, tree)
    by_name = {s["name"]: s for s in spans}
    gateway, turn = by_name["POST /v1/chat/completions"], by_name["turn"]
    assert gateway["parent_id"] == CLIENT_SPAN
    assert turn["parent_id"] == gateway["span_id"]
    children = {s["name"] for s in spans if s["parent_id"] == turn["span_id"]}
    assert {"guardrails.input", "memory.retrieve", "inference.route", "generate"} <= children, tree
    assert {"guardrails.output", "memory.store"} <= children, tree
    # Memory screens what it retrieved within its own hop.
    contexts = [s for s in spans if s["name"] == "guardrails.context"]
    retrieves = {s["span_id"] for s in spans if s["name"] == "memory.retrieve"}
    assert any(s["parent_id"] in retrieves for s in contexts), tree
    # The worker's span has the time to first token and the tokens.
    generates = [s for s in spans if s["name"] == "generate"]
    assert len(generates) == 1, tree
    generate = generates[0]
    attrs = generate["attributes"]
    assert attrs["enclave.time_to_first_token_s"] >= 0
    assert attrs["gen_ai.usage.output_tokens"] > 0 and attrs["gen_ai.usage.input_tokens"] > 0
    # The turn's own audit record is appended within the trace, under the turn.
    appends = [s for s in spans if s["name"] == "audit.append"]
    assert any(s["parent_id"] == turn["span_id"] for s in appends), tree
    assert all(s["attributes"]["enclave.request_id"] == request_id for s in appends), appends
    tenants = {(s["name"], s["attributes"].get("enclave.tenant")) for s in spans}
    assert {t for _, t in tenants} == {"acme"}, tenants
