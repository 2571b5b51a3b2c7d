"""`enclave up`: the whole platform on this machine, every stage its own supervised process."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from libs.settings import Settings
from services.supervisor import Stage, Supervisor

# What `enclave up` starts: (service, pool)
DEFAULT_PLATFORM = (
    ("inference_router", None),
    ("worker", "smollm2"),
    ("worker", "gemma3"),
    ("worker", "minilm"),
    ("worker", "instant"),
    ("guardrails", None),
    ("agent_runtime", None),
    ("memory", None),
    ("audit", None),
    ("gateway", None),
)
READY_MODEL = "smollm2-135m-instruct"
READY_WAIT_S = 600.0


def stage_of(service: str, pool: str | None) -> Stage:
    cmd = [sys.executable, "-m", "services.cli", "serve", service]
    if pool:
        cmd += ["--pool", pool]
    return Stage(name=f"{service}:{pool}" if pool else service, cmd=cmd)


def run(settings: Settings, only: Sequence[str]) -> int:
    """Start every service as its own process; restart one that exits; Ctrl-C stops all."""
    started = time.monotonic()
    key_file = prepare(settings)
    stages = [
        stage_of(service, pool)
        for service, pool in DEFAULT_PLATFORM
        if not only or service in only or f"{service}:{pool}" in only
    ]
    supervisor = Supervisor(stages)
    base = f"http://{settings.gateway_host}:{settings.gateway_port}"

    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:  # a second Ctrl-C: no grace period
            supervisor.grace_s = 0.0

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    supervisor.start_all()
    print(f"Enclave is starting: gateway on {base} — Ctrl-C stops it.", flush=True)
    if not only:
        threading.Thread(
            target=_announce_ready,
            args=(base, key_file.read_text().strip(), started),
            daemon=True,
        ).start()
    try:
        while not signals:
            supervisor.poll()
            time.sleep(0.2)
    finally:
        supervisor.stop()
    print("Enclave stopped.", flush=True)
    return 0


def prepare(settings: Settings) -> Path:
    """The schema, the audit keys and the first admin key; returns the admin key's file."""
    from libs.db.engine import migrate
    from services.audit import cli as audit_cli

    migrate(settings.sqlalchemy_url)
    for path in audit_cli.ensure(settings):
        print(f"created audit key {path}", flush=True)
    key_file = settings.home / "admin.key"
    if not key_file.exists():
        from services.cli import _create_key

        plaintext = asyncio.run(_create_key(settings, "default", "admin", "make up", None))
        key_file.touch(mode=0o600)
        key_file.write_text(plaintext + "\n")
        print(f"created an admin key for tenant `default` in {key_file}", flush=True)
    return key_file


def _announce_ready(base: str, key: str, started: float) -> None:
    """Say when a chat first goes through every stage (gateway, runtime, guardrails,
    router, worker): before that, requests may get 503s while models load."""
    body = json.dumps(
        {"model": READY_MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    ).encode()
    while time.monotonic() - started < READY_WAIT_S:
        request = urllib.request.Request(
            f"{base}/v1/chat/completions",
            data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                if response.status == 200:
                    took = time.monotonic() - started
                    print(f"Enclave is ready ({took:.0f} s): {base}", flush=True)
                    return
        except (OSError, urllib.error.URLError):
            pass  # not up yet, or a stage still loading (503)
        time.sleep(0.5)
    print(f"Enclave did not answer a chat within {READY_WAIT_S:.0f} s", flush=True)
