"""While no external provider is enabled, no process of the platform connects anywhere
but loopback: proved by an audit hook on socket connect and name lookup in every process
(tests/identity/egress_hook/sitecustomize.py), not by reading the code."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import _platform
from tests.infra import REPO, Infra, Platform

HOOK = Path(__file__).parent / "egress_hook"


@pytest.fixture(scope="module")
def hooked(services: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("egress")
    log = home / "egress.log"
    log.touch()
    path = os.pathsep.join([str(HOOK), str(REPO), os.environ.get("PYTHONPATH", "")])
    plat = _platform(services, home, PYTHONPATH=path, ENCLAVE_EGRESS_LOG=str(log))
    try:
        for name, service, *pool in [
            ("router", "inference_router"),
            ("worker-instant", "worker", "instant"),
            ("guardrails", "guardrails"),
            ("runtime", "agent_runtime"),
            ("audit", "audit"),
            ("gateway", "gateway"),
        ]:
            plat.start(name, service, *pool)
        plat.wait_ready()
        plat.wait_model("enclave-instant")
        yield plat
    finally:
        plat.stop_all()


def test_the_hook_sees_an_outbound_connect(hooked: Platform) -> None:
    """The control: the same hook in a process that does try to leave records it."""
    probe = (
        "import socket\n"
        "s = socket.socket(); s.settimeout(0.2)\n"
        "try: s.connect(('192.0.2.1', 9))\n"  # TEST-NET-1: reaches nothing
        "except OSError: pass\n"
    )
    log = Path(hooked.env["ENCLAVE_EGRESS_LOG"])
    before = log.read_text()
    subprocess.run([sys.executable, "-c", probe], env=hooked.env, check=True, timeout=30)
    assert "192.0.2.1:9" in log.read_text()[len(before) :]
    log.write_text(before)


def test_no_process_connects_beyond_loopback(hooked: Platform) -> None:
    headers = {"Authorization": f"Bearer {hooked.admin_key}"}
    body = {
        "model": "enclave-instant",
        "messages": [{"role": "user", "content": "My name is Jane Doe, call me at 555-0100"}],
        "max_tokens": 8,
    }
    for stream in (False, True):
        r = httpx.post(
            hooked.base_url + "/v1/chat/completions",
            headers=headers,
            json={**body, "stream": stream},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    assert httpx.get(hooked.base_url + "/v1/models", headers=headers, timeout=30).status_code == 200
    log = Path(hooked.env["ENCLAVE_EGRESS_LOG"]).read_text()
    assert log == "", log
