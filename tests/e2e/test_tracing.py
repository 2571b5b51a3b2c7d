"""One trace per request across processes: gateway -> runtime -> guardrails, worker (the
whole chain, retrieval, memory and audit included: tests/ops/test_trace_platform.py)."""

from __future__ import annotations

import json
import time

import httpx

from tests.infra import Platform


def spans_of(platform: Platform, request_id: str) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for path in (platform.home / "traces").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                span = json.loads(line)
            except ValueError:
                continue  # a line its process is writing now
            if span["attributes"].get("enclave.request_id") == request_id:
                found[span["name"]] = span
    return found


def test_a_chat_is_one_trace_across_every_hop(platform: Platform) -> None:
    # gateway -> runtime -> guardrails and worker; the router answers the runtime's route
    # lookups, which the runtime caches, so it is a hop of this request only on a miss.
    client_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = httpx.post(
        platform.base_url + "/v1/chat/completions",
        headers={
            "Authorization": f"Bearer {platform.admin_key}",
            "traceparent": f"00-{client_trace}-00f067aa0ba902b7-01",
        },
        json={"model": "enclave-instant", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 200
    request_id = r.headers["x-request-id"]
    wanted = {"POST /v1/chat/completions", "turn", "guardrails.input", "generate"}
    deadline = time.monotonic() + 30
    spans = spans_of(platform, request_id)
    while not wanted <= set(spans) and time.monotonic() < deadline:
        time.sleep(0.2)
        spans = spans_of(platform, request_id)
    assert wanted <= set(spans), set(spans)
    assert {s["trace_id"] for s in spans.values()} == {client_trace}
    gateway, turn = spans["POST /v1/chat/completions"], spans["turn"]
    assert gateway["parent_id"] == "00f067aa0ba902b7"
    assert turn["parent_id"] == gateway["span_id"]
    assert spans["generate"]["parent_id"] == turn["span_id"]
    assert spans["guardrails.input"]["parent_id"] == turn["span_id"]
    assert {s["attributes"]["enclave.tenant"] for s in spans.values()} == {"acme"}
