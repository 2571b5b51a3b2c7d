"""Supervision in `enclave up`, with real processes and real signals: a stage killed with
SIGKILL is started again and the next chat passes while the others keep serving; Ctrl-C
ends `up` within 10 s even when a stage hangs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.infra import Infra, chat, free_port, platform_env, start_up, stop_up

# What a chat on the instant engine needs: no model to load.
CHAT_STAGES = ("inference_router", "worker:instant", "guardrails", "agent_runtime", "gateway")


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    log: Path
    base: str
    home: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pid(self, stage: str) -> int:
        """The pid of the stage's latest start, as `up` printed it."""
        found = re.findall(rf"(?:started|restarted) {re.escape(stage)} \(pid (\d+)\)", self.text())
        assert found, self.text()[-3000:]
        return int(found[-1])

    def wait_for(self, line: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.text():
            assert self.proc.poll() is None, self.text()[-3000:]
            assert time.monotonic() < deadline, self.text()[-3000:]
            time.sleep(0.2)

    def chat(self) -> httpx.Response:
        return chat(self.base, (self.home / "admin.key").read_text().strip(), "enclave-instant")


@pytest.fixture
def up(services: Infra, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Up]:
    port = free_port()
    env = platform_env(services, tmp_path, port)
    log = tmp_path / "up.log"
    proc = start_up(env, log, "--only", *request.param)
    try:
        yield Up(proc, log, f"http://127.0.0.1:{port}", tmp_path)
    finally:
        stop_up(proc)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone too
        return f.read().split(")")[-1].split()[0] == "Z"


@pytest.mark.parametrize("up", [CHAT_STAGES], indirect=True)
def test_a_stage_killed_with_sigkill_is_restarted_and_the_next_chat_passes(up: Up) -> None:
    up.wait_for("Enclave is starting")  # the admin key exists
    deadline = time.monotonic() + 180
    while True:  # until a chat passes every stage
        assert up.proc.poll() is None, up.text()[-3000:]
        try:
            r = up.chat()
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
        except httpx.TransportError:
            pass  # the gateway is still starting
        assert time.monotonic() < deadline, up.text()[-3000:]
        time.sleep(0.5)
    others = {stage: up.pid(stage) for stage in CHAT_STAGES if stage != "agent_runtime"}
    runtime = up.pid("agent_runtime")

    os.kill(runtime, signal.SIGKILL)
    up.wait_for("restarted agent_runtime", timeout=30)
    assert "agent_runtime exited with -9; restarting it in" in up.text()

    r = up.chat()  # queued until the new runtime takes it
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert up.pid("agent_runtime") != runtime
    # Nothing else was restarted: the other stages kept serving.
    assert {stage: up.pid(stage) for stage in others} == others
    assert all(not _gone(pid) for pid in others.values())

    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=10) == 0
    assert "Enclave stopped." in up.text()


@pytest.mark.parametrize("up", [("gateway",)], indirect=True)
def test_ctrl_c_ends_up_within_10_s_even_when_a_stage_hangs(up: Up) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert up.proc.poll() is None, up.text()[-3000:]
        try:
            if httpx.get(f"{up.base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, up.text()[-3000:]
        time.sleep(0.3)
    gateway = up.pid("gateway")
    os.kill(gateway, signal.SIGSTOP)  # hung: it handles no signal but SIGKILL

    began = time.monotonic()
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=15) == 0
    took = time.monotonic() - began
    assert took < 10, took
    assert _gone(gateway)
    assert "gateway did not stop" in up.text()
    assert "Enclave stopped." in up.text()
