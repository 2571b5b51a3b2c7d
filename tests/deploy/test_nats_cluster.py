"""deploy/nats/cluster.conf: three local nats-server processes form a JetStream cluster;
the platform's streams are created R3 (ENCLAVE_STREAM_REPLICAS=3); the stream's leader is
killed while the platform's own audit publisher keeps publishing and a consumer keeps
reading, and not one audit event is lost."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient

from libs.audit import AuditPublisher
from libs.bus import ensure_streams
from libs.context import RequestContext
from libs.events import AuditEvent
from libs.settings import Settings
from tests.infra import REPO, free_port

CONFIG = REPO / "deploy" / "nats" / "cluster.conf"
PASSWORD = "client-" + secrets.token_hex(4)
ROUTE_PASSWORD = "route-" + secrets.token_hex(4)
EVENTS_BEFORE, EVENTS_DURING = 60, 120


@dataclass
class Node:
    name: str
    client: int
    http: int
    route: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://enclave:{PASSWORD}@127.0.0.1:{self.client}"


def nats_server() -> str:
    path = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if path is None:
        pytest.fail("nats-server is missing: deploy/local/bootstrap.sh installs it")
    return path


def node_env(node: Node, nodes: list[Node], store: Path) -> dict[str, str]:
    env = {
        "NATS_SERVER_NAME": node.name,
        "NATS_LISTEN": f"127.0.0.1:{node.client}",
        "NATS_HTTP": f"127.0.0.1:{node.http}",
        "NATS_CLUSTER_LISTEN": f"127.0.0.1:{node.route}",
        "NATS_STORE_DIR": str(store / node.name),
        "NATS_PASSWORD": PASSWORD,
        "NATS_ROUTE_PASSWORD": ROUTE_PASSWORD,
    }
    for i, peer in enumerate(nodes, start=1):
        env[f"NATS_ROUTE_{i}"] = f"nats-route://route:{ROUTE_PASSWORD}@127.0.0.1:{peer.route}"
    return env


def jetstream_ready(node: Node) -> bool:
    """The node is up, in a cluster of three, and knows the meta leader."""
    try:
        jsz = httpx.get(f"http://127.0.0.1:{node.http}/jsz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    meta = jsz.get("meta_cluster") or {}
    return bool(meta.get("leader")) and meta.get("cluster_size") == 3


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[Node]]:
    nodes = [Node(f"nats-{i}", free_port(), free_port(), free_port()) for i in (1, 2, 3)]
    server = nats_server()
    for node in nodes:
        log = open(tmp_path / f"{node.name}.log", "wb")  # noqa: SIM115 - closed with it
        node.proc = subprocess.Popen(
            [server, "-c", str(CONFIG)],
            env=node_env(node, nodes, tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not all(jetstream_ready(n) for n in nodes):
            dead = [n.name for n in nodes if n.proc and n.proc.poll() is not None]
            logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
            assert not dead, f"{dead} exited:\n{logs[-3000:]}"
            assert time.monotonic() < deadline, f"no JetStream cluster:\n{logs[-3000:]}"
            await asyncio.sleep(0.3)
        yield nodes
    finally:
        for node in nodes:
            if node.proc and node.proc.poll() is None:
                node.proc.terminate()
        for node in nodes:
            if node.proc:
                node.proc.wait(timeout=30)


def test_the_config_is_valid_for_every_node(tmp_path: Path) -> None:
    nodes = [Node(f"nats-{i}", 4222, 8222, 6222 + i) for i in (1, 2, 3)]
    for node in nodes:
        done = subprocess.run(
            [nats_server(), "-t", "-c", str(CONFIG)],
            env=node_env(node, nodes, tmp_path),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr


async def connect(nodes: list[Node]) -> NatsClient:
    return await nats.connect(
        [n.url for n in nodes],
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=2,
    )


async def test_r3_streams_lose_no_audit_event_when_a_node_dies(
    cluster: list[Node], tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, bus_prefix=f"t{secrets.token_hex(4)}", stream_replicas=3)
    subjects = settings.subjects
    stream = subjects.audit_stream_name
    nc = await connect(cluster)
    reader_nc = await connect(cluster)
    publisher = AuditPublisher(nc, subjects, "gateway", tmp_path / "outbox").start()
    try:
        await ensure_streams(nc, settings)
        js = nc.jetstream()
        for name in (subjects.chat_stream_name, subjects.memory_stream_name, stream):
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3, name
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, name

        # A reader that keeps reading all along: a durable pull consumer, R3 like its stream.
        seen: set[str] = set()
        reading = asyncio.Event()
        sub = await reader_nc.jetstream().pull_subscribe(subjects.audit_all, "reader", stream)

        done = asyncio.Event()

        async def read() -> None:
            # Until told: a cancel can be lost inside nats-py's fetch (it waits with Python
            # 3.11's asyncio.wait_for), and a reader that missed it once spun on a closing
            # connection's failing fetches for minutes.
            while not done.is_set():
                try:
                    msgs = await sub.fetch(50, timeout=1)
                except Exception:  # no message this second, or a leader election under way
                    await asyncio.sleep(0.05)
                    continue
                for msg in msgs:
                    seen.add(AuditEvent.model_validate_json(msg.data).id)
                    await msg.ack()
                reading.set()

        reader = asyncio.create_task(read())
        sent: list[str] = []

        async def emit(n: int) -> None:
            for i in range(n):
                ctx = RequestContext(tenant="acme", request_id=f"req-{len(sent)}-{i}")
                event = await publisher.emit("chat.completed", ctx, outcome="ok")
                sent.append(event.id)

        await emit(EVENTS_BEFORE)
        await asyncio.wait_for(reading.wait(), 30)

        # Kill the node that leads the audit stream: the hardest one to lose.
        leader = (await js.stream_info(stream)).cluster.leader  # type: ignore[union-attr]
        (victim,) = [n for n in cluster if n.name == leader]
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        await emit(EVENTS_DURING)

        # The survivors elect a new leader; what waited in the outbox goes out.
        deadline = time.monotonic() + 90
        while publisher.outbox_size() or len(seen) < len(sent):
            assert time.monotonic() < deadline, (
                f"outbox {publisher.outbox_size()}, read {len(seen)} of {len(sent)}"
            )
            await asyncio.sleep(0.5)
        assert seen == set(sent)
        info = await js.stream_info(stream)
        assert info.state.messages == EVENTS_BEFORE + EVENTS_DURING  # no duplicates either
        assert info.cluster is not None and info.cluster.leader != leader
        done.set()
        await reader
    finally:
        await publisher.close()
        await reader_nc.close()
        await nc.close()
