"""`enclave up` (what `make up` runs): every service as its own process, `/readyz` 200 only
once a chat can pass, a readiness line, and Ctrl-C stopping all of them within 10 s.

Here nothing listens on the configured NATS and Redis ports, as on a fresh machine: `up`
runs its own nats-server (one user per service, subject permissions) and Redis (with a
password), and every service works with its own credential."""

from __future__ import annotations

import asyncio
import signal
import stat
import time
from pathlib import Path

import httpx
import nats
import pytest
import redis

from tests.infra import Infra, chat, free_port, platform_env, start_up, stop_up


def test_up_is_ready_when_a_chat_passes_and_ctrl_c_stops_everything(
    services: Infra, tmp_path: Path
) -> None:
    port, nats_port, redis_port = free_port(), free_port(), free_port()
    env = platform_env(
        services,
        tmp_path,
        port,
        ENCLAVE_NATS_URL=f"nats://127.0.0.1:{nats_port}",
        ENCLAVE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
    )
    log = tmp_path / "up.log"
    proc = start_up(env, log)
    try:
        # /readyz means a chat can pass: the first 200 is followed by a chat that passes
        # (before it, nothing answers, or 503; never 200 and then a 503 for the chat).
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        key = (tmp_path / "admin.key").read_text().strip()
        r = chat(f"http://127.0.0.1:{port}", key, "smollm2-135m-instruct")
        assert r.status_code == 200, r.text
        while b"Enclave is ready" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        # Each service does its part with its own credential: models, embeddings (router,
        # worker), vector stores (memory), the audit trail (every service, audit's consumer,
        # the gateway's audit API).
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert api.get("/v1/models").status_code == 200
        assert api.get("/v1/vector_stores").status_code == 200
        embed = {"model": "all-minilm-l6-v2", "input": "ping"}
        while (r := api.post("/v1/embeddings", json=embed)).status_code == 503:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        while not (r := api.get("/v1/audit/entries")).json().get("entries"):
            assert r.status_code == 200, r.text
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        # The bus is authenticated, and no service was refused anything it needed.
        assert stat.S_IMODE((tmp_path / "bus" / "nats.conf").stat().st_mode) == 0o600
        assert "Violation" not in log.read_text(), log.read_text()[-3000:]
        with pytest.raises(Exception, match=r"(?i)authorization"):
            asyncio.run(nats.connect(f"nats://127.0.0.1:{nats_port}", allow_reconnect=False))
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port).ping()
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=40) == 0
        assert time.monotonic() - began < 10
        assert b"Enclave stopped." in log.read_bytes()
        # Nothing of it is left listening.
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            raise AssertionError("the gateway still answers after Ctrl-C")
        except httpx.TransportError:
            pass
    finally:
        stop_up(proc)
