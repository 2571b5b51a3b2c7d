"""`enclave up` (what `make up` runs): every service as its own process, `/readyz` 200 only
once a chat can pass, a readiness line, and Ctrl-C stopping all of them within 10 s."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.infra import REPO, Infra, free_port, platform_env


def test_up_is_ready_when_a_chat_passes_and_ctrl_c_stops_everything(
    services: Infra, tmp_path: Path
) -> None:
    port = free_port()
    env = platform_env(services, tmp_path, port)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
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
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "Say hi"}],
                "max_tokens": 4,
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text
        while b"Enclave is ready" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
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
        if proc.poll() is None:  # a failed test still stops the services it started
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
