"""Where the tests find NATS, Redis and PostgreSQL, and how they start the platform.

With a Docker engine, testcontainers starts throwaway servers (the production-like
path); without one, as on these CI machines, the local services on 127.0.0.1 serve
(PostgreSQL: a private cluster that deploy/local/services.sh starts, see
`postgres_admin_url`), each test run isolated by its own bus prefix, database and
ENCLAVE_HOME.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.events import AuditEvent

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Infra:
    nats_url: str
    redis_url: str
    postgres_admin_url: str  # a database we may CREATE DATABASE from (asyncpg DSN)
    containers: list[object] = field(default_factory=list)


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def infra() -> Iterator[Infra]:
    if _docker_available() and not os.environ.get("ENCLAVE_TEST_LOCAL"):
        from testcontainers.core.container import DockerContainer
        from testcontainers.postgres import PostgresContainer
        from testcontainers.redis import RedisContainer

        nats_c = DockerContainer("nats:2.10").with_command("-js").with_exposed_ports(4222)
        pg_c = PostgresContainer("postgres:16", username="postgres", password="postgres")
        redis_c = RedisContainer("redis:7")
        for c in (nats_c, pg_c, redis_c):
            c.start()
        try:
            yield Infra(
                nats_url=f"nats://{nats_c.get_container_host_ip()}:{nats_c.get_exposed_port(4222)}",
                redis_url=f"redis://{redis_c.get_container_host_ip()}:{redis_c.get_exposed_port(6379)}/0",
                postgres_admin_url=(
                    f"postgresql://postgres:postgres@{pg_c.get_container_host_ip()}:"
                    f"{pg_c.get_exposed_port(5432)}/postgres"
                ),
                containers=[nats_c, pg_c, redis_c],
            )
        finally:
            for c in (nats_c, pg_c, redis_c):
                c.stop()
        return
    postgres = postgres_admin_url()
    missing = [name for name, port in (("NATS", 4222), ("Redis", 6379)) if not _port_open(port)]
    if postgres is None:
        missing.append("PostgreSQL")
    if missing or postgres is None:
        raise RuntimeError(
            f"{', '.join(missing)} not reachable on 127.0.0.1; run "
            "`bash deploy/local/services.sh --postgres` first"
        )
    yield Infra(
        nats_url="nats://127.0.0.1:4222",
        redis_url="redis://127.0.0.1:6379/0",
        postgres_admin_url=postgres,
    )


def postgres_admin_url() -> str | None:
    """The tests' PostgreSQL: ENCLAVE_TEST_POSTGRES_URL (a password from the environment),
    else the private cluster that `deploy/local/services.sh --postgres` started (its URL,
    with a generated password, in <ENCLAVE_HOME>/infra/postgres.url), else a server on
    5432 that already lets `postgres` in over TCP without a password (never configured so
    by us)."""
    if url := os.environ.get("ENCLAVE_TEST_POSTGRES_URL"):
        return url
    home = Path(os.environ.get("ENCLAVE_HOME") or REPO / ".enclave")
    url_file = home / "infra" / "postgres.url"
    if url_file.exists():
        url = url_file.read_text().strip()
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        if _port_open(port):
            return url
    legacy = "postgresql://postgres@127.0.0.1:5432/postgres"
    if _port_open(5432) and _postgres_lets_in(legacy):
        return legacy
    return None


def _postgres_lets_in(url: str) -> bool:
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except Exception:
            return False
        await conn.close()
        return True

    with ThreadPoolExecutor(1) as pool:  # the caller may be inside a running event loop
        return pool.submit(asyncio.run, probe()).result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Platform:
    """A whole platform of real processes on the real bus, isolated by prefix and home."""

    env: dict[str, str]
    home: Path
    base_url: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    admin_key: str = ""

    def start(
        self, name: str, service: str, pool: str | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "services.cli", "serve", service]
        if pool:
            cmd += ["--pool", pool]
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        self.procs[name] = proc
        return proc

    def launch(
        self,
        workers: Iterable[str] = (),
        services: Iterable[str] = (),
        models: Iterable[str] = (),
    ) -> None:
        """Start a platform: the router, a worker per pool in `workers` (named
        `worker-<pool>`), the guardrails, the runtime, `services` (memory, audit, sandbox,
        trainer, ...; named as their service) and the gateway; then wait until the gateway
        is ready, memory answers (when started) and a worker serves each chat model of
        `models`."""
        self.start("router", "inference_router")
        for pool in workers:
            self.start(f"worker-{pool}", "worker", pool)
        self.start("guardrails", "guardrails")
        self.start("runtime", "agent_runtime")
        for service in services:
            self.start(service, service)
        self.start("gateway", "gateway")
        self.wait_ready()
        if "memory" in self.procs:
            self.wait_memory()
        for model in models:
            self.wait_model(model)

    def wait_memory(self, timeout: float = 120) -> None:
        """Until the memory service answers through the gateway."""
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = httpx.get(self.base_url + "/v1/vector_stores", headers=headers, timeout=30)
            if r.status_code == 200:
                return
            time.sleep(0.5)
        raise RuntimeError(f"memory service not ready in {timeout}s:\n{self.logs()[-4000:]}")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        # All at once (each stops in seconds on a loaded machine: one after another, a
        # dozen services took 40 s), then what has not stopped within 20 s is killed.
        procs = [self.procs.pop(name) for name in list(self.procs)]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # In a thread of its own: stop_all may be called from inside a running event loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self._delete_streams()).result()

    async def _delete_streams(self) -> None:
        """Drop this platform's JetStream streams: test runs must not pile up on the server."""
        tag = self.env["ENCLAVE_BUS_PREFIX"].upper() + "_"
        nc = await nats.connect(self.env["ENCLAVE_NATS_URL"])
        try:
            js = nc.jetstream()
            for info in await js.streams_info():
                if info.config.name and info.config.name.startswith(tag):
                    await js.delete_stream(info.config.name)
        finally:
            await nc.close()

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def create_key(self, tenant: str, role: str, rpm: int | None = None) -> str:
        args = ["keys", "create", "--tenant", tenant, "--role", role]
        if rpm is not None:
            args += ["--rpm", str(rpm)]
        return self.cli(*args).splitlines()[-1]

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.home.glob("*.log")))

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited during start:\n{self.logs()[-4000:]}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"gateway not ready in {timeout}s:\n{self.logs()[-4000:]}")

    def wait_model(self, model: str, kind: str = "chat", timeout: float = 180) -> None:
        """Until a worker of the model's pool answers a real request."""
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        while time.monotonic() < deadline:
            if kind == "embedding":
                r = httpx.post(
                    self.base_url + "/v1/embeddings",
                    headers=headers,
                    json={"model": model, "input": "ping"},
                    timeout=60,
                )
            else:
                path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
                body: dict[str, object] = {"model": model, "max_tokens": 1}
                if kind == "chat":
                    body["messages"] = [{"role": "user", "content": "ping"}]
                else:
                    body["prompt"] = "ping"
                r = httpx.post(self.base_url + path, headers=headers, json=body, timeout=60)
            if r.status_code == 200:
                return
            if r.status_code != 503:
                raise RuntimeError(f"{model}: {r.status_code} {r.text}")
            time.sleep(0.5)
        raise RuntimeError(f"no worker for {model} in {timeout}s:\n{self.logs()[-4000:]}")


def platform_env(infra: Infra, home: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(
        ENCLAVE_HOME=str(home),
        ENCLAVE_NATS_URL=infra.nats_url,
        ENCLAVE_REDIS_URL=infra.redis_url,
        ENCLAVE_BUS_PREFIX=f"t{secrets.token_hex(4)}",
        ENCLAVE_GATEWAY_PORT=str(port),
        ENCLAVE_WORKER_THREADS="2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_up(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`enclave up` (what `make up` runs) as a real process, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", *args],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_up(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a failed test must still stop what it started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def chat(base_url: str, key: str, model: str, timeout: float = 60) -> httpx.Response:
    """One short chat completion."""
    return httpx.post(
        f"{base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4},
        timeout=timeout,
    )


async def audit_events(nc: NatsClient, subject: str) -> AuditTap:
    """Every audit event published on `subject` (the bus's `audit_all`) from now on."""
    events: list[AuditEvent] = []

    async def collect(msg: Msg) -> None:
        events.append(AuditEvent.model_validate_json(msg.data))

    return AuditTap(events, await nc.subscribe(subject, cb=collect))


@dataclass
class AuditTap:
    events: list[AuditEvent]
    sub: Subscription

    async def close(self) -> None:
        await self.sub.unsubscribe()
