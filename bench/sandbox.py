"""Sandbox benchmark: start-to-result latency of a trivial program, `python -m bench sandbox`.

Rows (P50 and P95 over N runs, one at a time, the rows interleaved so that they share
whatever else loads the machine):
- `bwrap true`: the same namespaces and mounts with `true` instead of the runner (the floor);
- python / bash, started on demand: a whole run on the bubblewrap backend: admission,
  sandbox start, runner, the program, output and files collected, classification;
- a warm sandbox: the same, the sandbox started ahead (namespaces and the runner's Python
  ready, waiting for its job), as the service runs by default;
- python over NATS: the same through the sandbox service (request/reply on sandbox.exec).
Target: P50 <= 150 ms for the trivial Python program with bubblewrap (marked on each row
that runs it; the service serves from warm sandboxes, ENCLAVE_SANDBOX_WARM).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from libs.bus import event_bytes
from libs.context import RequestContext
from libs.events import SandboxExecReply, SandboxExecRequest
from libs.seccomp import build_filter
from libs.service import running
from libs.settings import Settings
from services.sandbox.adapters.bwrap import GROUP, PASSWD, BwrapBackend, bwrap_argv, memfd
from services.sandbox.bootstrap import build
from services.sandbox.executor import execute
from services.sandbox.limits import Limits

N = 40
TARGET_P50_MS = 150.0
NATS_URL = os.environ.get("ENCLAVE_NATS_URL", "nats://127.0.0.1:4222")


def _request(language: str, code: str) -> SandboxExecRequest:
    ctx = RequestContext(tenant="bench", request_id=f"req-{secrets.token_hex(6)}")
    return SandboxExecRequest(ctx=ctx, language=language, code=code)


def _floor_argv(limits: Limits, fds: list[int]) -> list[str]:
    """The sandbox's own command line, running `true` instead of the runner."""
    argv = bwrap_argv(limits, passwd_fd=fds[0], group_fd=fds[1], seccomp_fd=None, host_uid=None)
    return [*argv[: argv.index("--chdir")], "--", "true"]


async def _bench() -> list[tuple[str, list[float]]]:
    limits = Limits()
    seccomp, uid_base = build_filter(), Settings().sandbox_uid_base
    cold = BwrapBackend(limits, seccomp=seccomp, concurrency=1, uid_base=uid_base)
    warm = BwrapBackend(limits, seccomp=seccomp, concurrency=1, uid_base=uid_base, warm=1)
    fds = [memfd("passwd", PASSWD), memfd("group", GROUP)]
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(
            home=Path(home), nats_url=NATS_URL, bus_prefix=f"bench{secrets.token_hex(3)}"
        )
        service = contextlib.AsyncExitStack()
        await service.enter_async_context(running(settings, "sandbox", build))
        nc = await nats.connect(NATS_URL)
        floor = _floor_argv(limits, fds)

        async def bwrap_true() -> None:
            for fd in fds:
                os.lseek(fd, 0, os.SEEK_SET)
            proc = await asyncio.create_subprocess_exec(*floor, pass_fds=fds)
            await asyncio.wait_for(proc.wait(), 30)

        async def python() -> None:
            reply = await execute(_request("python", "print(1)"), cold, limits)
            assert reply.status == "ok", reply

        async def bash() -> None:
            reply = await execute(_request("bash", "echo 1"), cold, limits)
            assert reply.status == "ok", reply

        async def python_warm() -> None:
            reply = await execute(_request("python", "print(1)"), warm, limits)
            assert reply.status == "ok", reply

        async def over_nats() -> None:
            msg = await nc.request(
                settings.subjects.sandbox_exec,
                event_bytes(_request("python", "print(1)")),
                timeout=30,
            )
            assert SandboxExecReply.model_validate_json(msg.data).status == "ok"

        rows: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("bwrap true (namespaces and mounts only)", bwrap_true),
            ("python print(1), bubblewrap, started on demand", python),
            ("bash echo 1, bubblewrap, started on demand", bash),
            ("python print(1), bubblewrap, a warm sandbox", python_warm),
            ("python print(1), over NATS (service, 2 warm)", over_nats),
        ]
        times: dict[str, list[float]] = {label: [] for label, _ in rows}
        for _, fn in rows:  # warm the page cache
            await fn()
        for _ in range(N):
            for label, fn in rows:
                started = time.perf_counter()
                await fn()
                times[label].append((time.perf_counter() - started) * 1000)
                if fn is python_warm:
                    await asyncio.sleep(0.15)  # requests this far apart find one started
        await nc.drain()
        await service.aclose()
        await warm.close()
        await cold.close()
    return list(times.items())


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    if BwrapBackend.missing():
        print(f"skipped: {', '.join(BwrapBackend.missing())} missing (apt-get install bubblewrap)")
        return
    load_before = _load()
    rows = asyncio.run(_bench())
    cores = os.cpu_count()
    width = max(len(label) for label, _ in rows)
    print(f"sandbox start-to-result, {N} runs each, {cores} cores, load {load_before} -> {_load()}")
    print(f"{'':<{width}}  {'P50 ms':>7}  {'P95 ms':>7}")
    for label, ms in rows:
        p50 = statistics.median(ms)
        p95 = statistics.quantiles(ms, n=20)[-1]
        mark = ""
        if label.startswith("python print(1)"):
            mark = "  ok" if p50 <= TARGET_P50_MS else f"  ABOVE the {TARGET_P50_MS:.0f} ms target"
        print(f"{label:<{width}}  {p50:>7.1f}  {p95:>7.1f}{mark}")
    kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    print(f"(bubblewrap {_bwrap_version()}, kernel {kernel})")


def _bwrap_version() -> str:
    out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout
    return out.split()[-1] if out else "?"


if __name__ == "__main__":
    main()
