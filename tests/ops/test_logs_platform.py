"""A prompt holding an e-mail address and an API-key-like token, through the real platform
(served, refused, and failed upstream): neither appears in any log or trace file, and every
process logs JSON lines."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.conftest import _platform
from tests.infra import Infra

EMAIL = "marguerite.okonkwo@example.org"
TOKEN = "sk-proj-7Hq2Lx9Vb4Nc1Zr8Kw3Tf6Yd"


def test_no_prompt_pii_or_secret_in_logs_or_traces(services: Infra, tmp_path: Path) -> None:
    plat = _platform(services, tmp_path)
    try:
        plat.launch(["echo"], ["audit"], ["enclave-echo"])
        headers = {"Authorization": f"Bearer {plat.admin_key}"}
        prompt = f"Please email {EMAIL} the deploy key {TOKEN} today."
        sent = []
        with httpx.Client(base_url=plat.base_url, headers=headers, timeout=60) as http:
            for body in (
                {"model": "enclave-echo", "messages": [{"role": "user", "content": prompt}]},
                {
                    "model": "enclave-echo",
                    "stream": True,
                    "messages": [{"role": "user", "content": prompt}],
                },
                # Refused: the prompt where a number belongs, and in a malformed message.
                {"model": "enclave-echo", "max_tokens": prompt, "messages": []},
                {"model": "enclave-echo", "messages": [{"role": prompt, "content": prompt}]},
                # Failed upstream: no worker serves the pool.
                {"model": "enclave-unserved", "messages": [{"role": "user", "content": prompt}]},
            ):
                sent.append(http.post("/v1/chat/completions", json=body).status_code)
            guard = http.post("/v1/guardrails/check", json={"text": prompt, "direction": "input"})
        assert sent[:2] == [200, 200] and sent[2] == 400 and sent[3] == 400, sent
        assert sent[4] in (503, 504) and guard.status_code == 200, (sent, guard.text)
        time.sleep(1.0)  # the last spans and lines reach their files
    finally:
        plat.stop_all()

    logs = sorted(tmp_path.glob("*.log"))
    traces = sorted((tmp_path / "traces").glob("*.jsonl"))
    assert {p.stem for p in logs} >= {"gateway", "runtime", "worker-echo", "guardrails"}
    assert traces, "no trace file written"
    spans = [json.loads(x) for p in traces for x in p.read_text().splitlines()]
    named = {s["service"] for s in spans}
    assert "enclave-gateway" in named and any(n.startswith("enclave-worker") for n in named)
    for path in [*logs, *traces]:
        text = path.read_text(errors="replace")
        for secret in (EMAIL, TOKEN, "marguerite", "7Hq2Lx9Vb4Nc1Zr8Kw3Tf6Yd", "deploy key"):
            assert secret not in text, f"{secret!r} in {path.name}"
    # Every line a process wrote is a JSON object naming its service (tracebacks included).
    records = [json.loads(line) for p in logs for line in p.read_text().splitlines() if line]
    assert records and all(r["service"] and "request_id" in r for r in records)
