"""`enclave up`: the whole platform on this machine, every stage its own supervised process.

Readiness: the stages behind the gateway start first; `up` sends a real chat turn over the
bus (as the gateway would) until one passes every stage (runtime, guardrails, router,
worker), and only then starts the gateway. So from the moment the gateway answers,
`/readyz` 200 means a chat can pass; before, nothing listens on its port.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import nats

from libs.bus import ensure_streams
from libs.context import RequestContext, new_request_id
from libs.errors import EnclaveError
from libs.events import ChatMessage, ChatRequested, GenerationParams
from libs.settings import Settings
from services.gateway.turn_client import TurnClient, TurnStream
from services.supervisor import Stage, Supervisor

# What `enclave up` starts: (service, pool); the gateway last, once a chat can pass.
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
PROBE_TIMEOUT_S = 30.0


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
    gateway = next((s for s in stages if s.name == "gateway"), None)
    # With --only, whatever was asked for starts at once: no chat may be able to pass.
    held = gateway if gateway is not None and not only else None
    supervisor = Supervisor([s for s in stages if s is not held])
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
    chat_passes = threading.Event()
    if held is not None:
        threading.Thread(
            target=_probe_until_a_chat_passes,
            args=(settings, chat_passes, lambda: signals > 0),
            daemon=True,
        ).start()
    try:
        while not signals:
            supervisor.poll()
            if held is not None and chat_passes.is_set():
                took = time.monotonic() - started
                print(f"a chat passed every stage ({took:.0f} s); starting the gateway", flush=True)
                supervisor.stages.append(held)
                supervisor.start(held)
                print(f"started gateway (pid {held.pid})", flush=True)
                threading.Thread(
                    target=_announce_ready,
                    args=(base, key_file.read_text().strip(), started),
                    daemon=True,
                ).start()
                held = None
            time.sleep(0.2)
    finally:
        supervisor.stop()
    print("Enclave stopped.", flush=True)
    return 0


def prepare(settings: Settings) -> Path:
    """The schema, the audit keys and the first admin key; returns the admin key's file."""
    from libs.db.engine import migrate
    from services.audit import cli as audit_cli

    if settings.home.stat().st_mode & 0o077:
        # Created by an older version, or by hand: it holds keys and raw prompts.
        settings.home.chmod(0o700)
        print(f"{settings.home} is now readable by its owner only (0700)", flush=True)
    migrate(settings.sqlalchemy_url)
    for path in audit_cli.ensure(settings):
        print(f"created audit key {path}", flush=True)
    key_file = settings.home / "admin.key"
    if not key_file.exists():
        from services.cli import _create_key

        plaintext = asyncio.run(_create_key(settings, "default", "admin", "make up", None))
        write_secret(key_file, plaintext + "\n")
        print(f"created an admin key for tenant `default` in {key_file}", flush=True)
    return key_file


def write_secret(path: Path, text: str) -> None:
    """A new file that only its owner can read, from its first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _probe_until_a_chat_passes(
    settings: Settings, passed: threading.Event, stopping: Callable[[], bool]
) -> None:
    try:
        asyncio.run(_probe(settings, passed, stopping))
    except Exception as exc:  # the gateway starts anyway; say why readiness is unknown
        print(f"the readiness probe failed ({exc!r}); starting the gateway", flush=True)
        passed.set()


async def _probe(settings: Settings, passed: threading.Event, stopping: Callable[[], bool]) -> None:
    """Send a one-token chat turn over the bus, as the gateway does, until one passes."""
    nc = await nats.connect(settings.nats_url, name="enclave-up", max_reconnect_attempts=-1)
    try:
        await ensure_streams(nc, settings)
        client = TurnClient(nc, settings.subjects, PROBE_TIMEOUT_S)
        await client.subscribe()
        started = time.monotonic()
        while not stopping() and time.monotonic() - started < READY_WAIT_S:
            event = ChatRequested(
                ctx=RequestContext(
                    tenant="default",
                    request_id=new_request_id("ready"),
                    actor="enclave up",
                    role="admin",
                ),
                model=READY_MODEL,
                messages=[ChatMessage(role="user", content="ping")],
                params=GenerationParams(max_tokens=1),
            )
            try:
                stream = await client.start(event)
                try:
                    if await _passes(stream):
                        passed.set()
                        return
                finally:
                    await stream.close()
            except EnclaveError:
                pass  # the bus is not there yet, or no answer in time
            await asyncio.sleep(0.5)
        passed.set()  # give up waiting: the gateway starts, and says what is missing
    finally:
        await nc.close()


async def _passes(stream: TurnStream) -> bool:
    while True:
        for ev in await stream.next_batch():
            if ev.error is not None:
                return False  # for example 503 while guardrails or a worker still load
            if ev.done:
                return True


def _announce_ready(base: str, key: str, started: float) -> None:
    """Say when the gateway answers a chat (every stage behind it already has)."""
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
            pass  # the gateway is still starting
        time.sleep(0.5)
    print(f"Enclave did not answer a chat within {READY_WAIT_S:.0f} s", flush=True)
