"""The bus of `enclave up` is authenticated: a private nats-server started with the generated
configuration lets only the gateway read chat.stream.>, refuses anonymous clients, and
every subject of the platform has a service allowed to publish it and one to read it."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.rpc import settled
from libs.subjects import Subjects
from services.bus_permissions import (
    inbox_prefix,
    nats_config,
    new_passwords,
    permissions,
    subject_matches,
    with_user,
)
from tests.infra import free_port

PREFIX = "tperm"


def _every_subject(s: Subjects) -> dict[str, str]:
    """Each subject the platform uses, with its placeholders filled in."""
    found = {}
    for name, member in inspect.getmembers(Subjects):
        if name.startswith("_") or name.endswith("_name"):
            continue
        if isinstance(member, property):
            found[name] = getattr(s, name)
        elif inspect.isfunction(member):
            args = ["x"] * (len(inspect.signature(member).parameters) - 1)
            found[name] = getattr(s, name)(*args)
    return found


def test_every_subject_has_a_publisher_and_a_reader() -> None:
    s = Subjects(PREFIX)
    table = permissions(s)
    for name, subject in _every_subject(s).items():
        if name.endswith("_of") or name == "audit_all":
            continue  # the wildcards themselves
        pubs = [u for u, p in table.items() if any(subject_matches(a, subject) for a in p.publish)]
        subs = [
            u for u, p in table.items() if any(subject_matches(a, subject) for a in p.subscribe)
        ]
        assert pubs, f"nobody may publish {name} ({subject})"
        assert subs, f"nobody may read {name} ({subject})"


def test_only_the_gateway_reads_chat_streams() -> None:
    s = Subjects(PREFIX)
    subject = s.chat_stream("gw1", "req-1")
    readers = [
        u
        for u, p in permissions(s).items()
        if any(subject_matches(a, subject) for a in p.subscribe)
    ]
    assert readers == ["gateway"]


def test_each_service_reads_only_its_own_inbox() -> None:
    table = permissions(Subjects(PREFIX))
    for user, p in table.items():
        for other in table:
            theirs = f"{inbox_prefix(other)}.abc.1"
            allowed = any(subject_matches(a, theirs) for a in p.subscribe)
            assert allowed == (other == user), (user, other)


def test_subject_matching() -> None:
    assert subject_matches("a.*.c", "a.b.c")
    assert not subject_matches("a.*", "a.b.c")
    assert subject_matches("a.>", "a.b.c")
    assert not subject_matches("a.>", "a")
    assert not subject_matches("a.b", "a.b.c")


@pytest.fixture
async def private_nats(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    passwords = new_passwords()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        nats_config(Subjects(PREFIX), passwords, "127.0.0.1", port, str(tmp_path / "js"))
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    url = f"nats://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        yield url, passwords
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _connect(url: str, errors: list[Exception]) -> Client:
    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    return await nats.connect(url, error_cb=on_error, allow_reconnect=False)


async def test_a_non_gateway_credential_cannot_read_chat_streams(
    private_nats: tuple[str, dict[str, str]],
) -> None:
    url, passwords = private_nats
    s = Subjects(PREFIX)
    errors: dict[str, list[Exception]] = {u: [] for u in ("gateway", "agent_runtime", "worker")}
    gw = await _connect(with_user(url, "gateway", passwords["gateway"]), errors["gateway"])
    rt = await _connect(
        with_user(url, "agent_runtime", passwords["agent_runtime"]), errors["agent_runtime"]
    )
    worker = await _connect(with_user(url, "worker", passwords["worker"]), errors["worker"])
    try:
        got: dict[str, list[bytes]] = {"gateway": [], "agent_runtime": []}

        def collect(user: str) -> Callable[[Msg], Awaitable[None]]:
            async def cb(msg: Msg) -> None:
                got[user].append(msg.data)

            return cb

        await gw.subscribe(s.chat_streams_of("*"), cb=collect("gateway"))
        await rt.subscribe(s.chat_streams_of("*"), cb=collect("agent_runtime"))
        await settled(gw)
        await settled(rt)
        # The worker (and the runtime) may write a turn's events; only the gateway reads them.
        await worker.publish(s.chat_stream("gw1", "req-1"), b"token")
        await rt.publish(s.chat_stream("gw1", "req-1"), b"done")
        await settled(worker)
        await settled(rt)
        deadline = asyncio.get_running_loop().time() + 5
        while len(got["gateway"]) < 2 or not errors["agent_runtime"]:
            assert asyncio.get_running_loop().time() < deadline, (got, errors)
            await asyncio.sleep(0.05)
        assert sorted(got["gateway"]) == [b"done", b"token"]
        assert got["agent_runtime"] == []
        assert "permissions violation" in str(errors["agent_runtime"][0]).lower()
        assert not errors["gateway"] and not errors["worker"]
    finally:
        for nc in (gw, rt, worker):
            await nc.close()


async def test_anonymous_and_wrong_passwords_are_refused(
    private_nats: tuple[str, dict[str, str]],
) -> None:
    url, passwords = private_nats
    for bad in (url, with_user(url, "gateway", passwords["worker"])):
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(bad, allow_reconnect=False, max_reconnect_attempts=0)


async def test_approvals_work_under_the_services_own_credentials(
    private_nats: tuple[str, dict[str, str]],
) -> None:
    """The runtime saves a paused run in the approvals bucket and takes `agent.resume`
    from its stream; the gateway lists and decides (compare-and-set) and publishes the
    resume; the worker may touch none of it."""
    from nats.js.api import ConsumerConfig

    from libs.approvals import ApprovalStore, new_approval_id
    from libs.bus import ensure_streams
    from libs.context import RequestContext
    from libs.events import ApprovalRecord
    from libs.settings import Settings

    url, passwords = private_nats
    s = Subjects(PREFIX)
    errors: dict[str, list[Exception]] = {u: [] for u in ("gateway", "agent_runtime", "worker")}
    ports = {u: with_user(url, u, passwords[u]) for u in errors}
    rt = await nats.connect(
        ports["agent_runtime"],
        inbox_prefix=inbox_prefix("agent_runtime").encode(),
        allow_reconnect=False,
    )
    gw = await _connect(ports["gateway"], errors["gateway"])
    worker = await _connect(ports["worker"], errors["worker"])
    try:
        await ensure_streams(rt, Settings(bus_prefix=PREFIX))
        runtime_store = ApprovalStore(rt, s)
        ctx = RequestContext(tenant="acme", request_id="req-1")
        record = ApprovalRecord(
            id=new_approval_id(), tenant="acme", agent="a", tool="t", call_id="c", ctx=ctx
        )
        await runtime_store.create(record)
        resumed: list[bytes] = []

        async def on_resume(msg: Msg) -> None:
            resumed.append(msg.data)
            await msg.ack()

        await rt.jetstream().subscribe(
            s.agent_resume,
            queue="agent_runtime_resume",
            durable="agent_runtime_resume",
            stream=s.agent_stream_name,
            cb=on_resume,
            manual_ack=True,
            config=ConsumerConfig(ack_wait=30),
        )
        gateway_store = ApprovalStore(gw, s)
        [listed] = await gateway_store.list("acme")
        found = await gateway_store.get("acme", record.id)
        assert found is not None and listed.id == record.id
        decided = found[0].model_copy(update={"status": "approved"})
        assert await gateway_store.update(decided, found[1])
        assert not await gateway_store.update(decided, found[1])  # stale revision
        await gw.jetstream().publish(s.agent_resume, b"{}")
        deadline = asyncio.get_running_loop().time() + 5
        while not resumed:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        again = await runtime_store.get("acme", record.id)
        assert again is not None and again[0].status == "approved"
        with pytest.raises(Exception):  # noqa: B017 - a permissions violation, as a timeout
            await worker.jetstream().key_value(s.approvals_bucket_name)
        assert not errors["gateway"]
    finally:
        for nc in (gw, rt, worker):
            await nc.close()


async def test_a_watched_sandbox_exec_works_under_the_services_own_credentials(
    private_nats: tuple[str, dict[str, str]],
) -> None:
    """The sandbox answers an exec twice ("accepted", then the reply: its two allowed
    responses) and its own liveness pings; the gateway and the runtime ask and ping."""
    from libs.context import RequestContext
    from libs.errors import EnclaveError
    from libs.events import SandboxExecReply, SandboxExecRequest
    from libs.rpc import Bus, serve, serve_alive
    from libs.settings import Settings

    url, passwords = private_nats
    s = Subjects(PREFIX)
    settings = Settings(bus_prefix=PREFIX, sandbox_alive_s=0.3)
    sandbox = await nats.connect(
        with_user(url, "sandbox", passwords["sandbox"]),
        inbox_prefix=inbox_prefix("sandbox").encode(),
        allow_reconnect=False,
    )
    callers = {
        user: await nats.connect(
            with_user(url, user, passwords[user]),
            inbox_prefix=inbox_prefix(user).encode(),
            allow_reconnect=False,
        )
        for user in ("gateway", "agent_runtime")
    }

    async def run(request: SandboxExecRequest) -> SandboxExecReply:
        await asyncio.sleep(1.0)  # pinged meanwhile
        return SandboxExecReply(status="ok", stdout=request.code)

    try:
        alive = s.sandbox_alive("r1")
        await serve_alive(sandbox, alive)
        await serve(
            sandbox, s.sandbox_exec, SandboxExecRequest, run, queue="sandbox", accepted=alive
        )
        await settled(sandbox)
        for user, nc in callers.items():
            bus = Bus(nc, settings)
            request = SandboxExecRequest(
                ctx=RequestContext(tenant="acme", request_id=user), language="bash", code=user
            )
            try:
                reply = await bus.ask(
                    bus.peers.sandbox(5), s.sandbox_exec, request, SandboxExecReply
                )
            except EnclaveError as exc:
                # Once in a full-suite run (never alone) the first ask found no responder
                # right after the replica's flush: asked once more after a pause. A refused
                # permission fails both times.
                assert exc.info.code == "sandbox_unavailable", exc.info
                await asyncio.sleep(0.5)
                reply = await bus.ask(
                    bus.peers.sandbox(5), s.sandbox_exec, request, SandboxExecReply
                )
            assert (reply.status, reply.stdout) == ("ok", user)
    finally:
        for nc in (sandbox, *callers.values()):
            await nc.close()
