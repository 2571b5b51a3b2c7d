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
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import nats

from libs.bus import ensure_streams
from libs.context import RequestContext, new_request_id
from libs.errors import EnclaveError
from libs.events import ChatMessage, ChatRequested, GenerationParams
from libs.settings import Settings
from services.bus_permissions import (
    REDIS_USERS,
    inbox_prefix,
    nats_config,
    new_passwords,
    redis_config,
    with_user,
)
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
    ("sandbox", None),
    ("trainer", None),
    ("gateway", None),
)
READY_MODEL = "smollm2-135m-instruct"
READY_WAIT_S = 600.0
PROBE_TIMEOUT_S = 30.0
# nats-server and redis-server stop within a second; the services get the other 6 s.
INFRA_GRACE_S = 1.5


def stage_of(service: str, pool: str | None, bus: OwnBus) -> Stage:
    cmd = [sys.executable, "-m", "services.cli", "serve", service]
    if pool:
        cmd += ["--pool", pool]
    return Stage(name=f"{service}:{pool}" if pool else service, cmd=cmd, env=bus.env(service))


@dataclass
class OwnBus:
    """The NATS and Redis servers `up` runs itself, with generated credentials, where none
    listens yet on the configured local ports; an existing server is used as it is."""

    settings: Settings
    stages: list[Stage] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)
    nats: bool = False
    redis: bool = False

    def nats_url(self, service: str) -> str:
        url = self.settings.nats_url
        return with_user(url, service, self.passwords[service]) if self.nats else url

    def env(self, service: str) -> dict[str, str]:
        env = {**os.environ, "ENCLAVE_NATS_URL": self.nats_url(service)}
        if self.nats:
            env["ENCLAVE_NATS_INBOX_PREFIX"] = inbox_prefix(service)
        if self.redis and service in REDIS_USERS:
            env["ENCLAVE_REDIS_URL"] = with_user(
                self.settings.redis_url, "", self.passwords["redis"]
            )
        return env

    def wait_listening(self, timeout: float = 15.0) -> None:
        for url, wanted in (
            (self.settings.nats_url, self.nats),
            (self.settings.redis_url, self.redis),
        ):
            if not wanted:
                continue
            host, port = _host_port(url)
            deadline = time.monotonic() + timeout
            while not _listening(host, port):
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"nothing listens on {host}:{port}; see {self.settings.home}/bus"
                    )
                time.sleep(0.1)


def own_bus(settings: Settings) -> OwnBus:
    bus = OwnBus(settings)
    nats_at, redis_at = _free_local(settings.nats_url), _free_local(settings.redis_url)
    if nats_at is None and redis_at is None:
        return bus
    folder = settings.home / "bus"
    folder.mkdir(mode=0o700, exist_ok=True)
    secrets_file = folder / "passwords.json"
    kept = json.loads(secrets_file.read_text()) if secrets_file.exists() else {}
    # Kept across restarts; a service added since the file was written gets one too.
    bus.passwords = {**new_passwords(), **kept}
    if bus.passwords.keys() != kept.keys():
        secrets_file.unlink(missing_ok=True)
        write_secret(secrets_file, json.dumps(bus.passwords))
    if nats_at is not None:
        conf = folder / "nats.conf"
        conf.unlink(missing_ok=True)
        store = settings.home / "nats"
        text = nats_config(settings.subjects, bus.passwords, *nats_at, str(store))
        write_secret(conf, text)
        binary = _binary("nats-server", "/usr/sbin/nats-server")
        bus.stages.append(Stage("nats-server", [binary, "-c", str(conf)]))
        bus.nats = True
        print(f"NATS on {nats_at[0]}:{nats_at[1]}: one user per service, in {conf}", flush=True)
    if redis_at is not None:
        conf = folder / "redis.conf"
        conf.unlink(missing_ok=True)
        data = settings.home / "redis"
        data.mkdir(mode=0o700, exist_ok=True)
        write_secret(conf, redis_config(bus.passwords["redis"], *redis_at, str(data)))
        binary = _binary("redis-server", "/usr/bin/redis-server")
        bus.stages.append(Stage("redis-server", [binary, str(conf)]))
        bus.redis = True
        print(f"Redis on {redis_at[0]}:{redis_at[1]} with a password, in {conf}", flush=True)
    return bus


def _binary(name: str, debian_path: str) -> str:
    found = shutil.which(name) or (debian_path if os.path.exists(debian_path) else None)
    if found is None:
        raise SystemExit(f"{name} is not installed: `make up` installs it (apt-get install {name})")
    return found


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    default = 6379 if parts.scheme.startswith("redis") else 4222
    return parts.hostname or "127.0.0.1", parts.port or default


def _free_local(url: str) -> tuple[str, int] | None:
    """Where `up` should run a server of its own: a local address nothing listens on."""
    host, port = _host_port(url)
    if host not in ("127.0.0.1", "localhost") or "@" in url or _listening(host, port):
        return None
    return host, port


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def run(settings: Settings, only: Sequence[str]) -> int:
    """Start every service as its own process; restart one that exits; Ctrl-C stops all."""
    started = time.monotonic()
    close_home(settings)
    bus = own_bus(settings)
    # Whatever `up` itself says on the bus (the audit of the admin key, the readiness probe)
    # it says as the gateway.
    as_gateway = settings.model_copy(update={"nats_url": bus.nats_url("gateway")})
    infra = Supervisor(bus.stages, grace_s=INFRA_GRACE_S)
    stages = [
        stage_of(service, pool, bus)
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
            supervisor.grace_s = infra.grace_s = 0.0

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(sig, on_signal)
    try:
        infra.start_all()
        bus.wait_listening()  # before the admin key: its creation is audited on the bus
        key_file = prepare(as_gateway)
        supervisor.start_all()
        print(f"Enclave is starting: gateway on {base} — Ctrl-C stops it.", flush=True)
        chat_passes = threading.Event()
        if held is not None:
            threading.Thread(
                target=_probe_until_a_chat_passes,
                args=(as_gateway, chat_passes, lambda: signals > 0),
                daemon=True,
            ).start()
        while not signals:
            infra.poll()
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
        infra.stop()  # the bus last: the services leave it first
    print("Enclave stopped.", flush=True)
    return 0


def close_home(settings: Settings) -> None:
    if settings.home.stat().st_mode & 0o077:
        # Created by an older version, or by hand: it holds keys and raw prompts.
        settings.home.chmod(0o700)
        print(f"{settings.home} is now readable by its owner only (0700)", flush=True)


def prepare(settings: Settings) -> Path:
    """The schema, the audit keys and the first admin key; returns the admin key's file."""
    from libs.db.engine import migrate
    from services.audit import cli as audit_cli

    migrate(settings.sqlalchemy_url)
    for path in audit_cli.ensure(settings):
        print(f"created audit key {path}", flush=True)
    key_file = settings.home / "admin.key"
    if not key_file.exists():
        from services import keys_cli

        plaintext = asyncio.run(keys_cli.create(settings, "default", "admin", "make up", None))
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
