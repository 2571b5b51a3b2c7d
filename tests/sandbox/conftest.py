"""Fixtures of the sandbox tests: the real bubblewrap backend, and a helper that runs code."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from libs.context import RequestContext
from libs.events import SandboxExecReply, SandboxExecRequest, SandboxFile
from libs.seccomp import build_filter
from services.sandbox.adapters.bwrap import BwrapBackend
from services.sandbox.adapters.cgroups import Cgroups
from services.sandbox.executor import execute
from services.sandbox.limits import Limits

# Small limits, so that the bombs end quickly.
LIMITS = Limits(
    timeout_s=5.0,
    max_timeout_s=20.0,
    cpu_s=10,
    memory_bytes=256 * 2**20,
    processes=32,
    output_bytes=64 * 1024,
    files_bytes=2 * 2**20,
    files_count=20,
    work_bytes=8 * 2**20,
)

# Tests take uids of their own (above the service's default), claimed like a replica's.
UID_BASE = 2_100_000_000

Run = Callable[..., Awaitable[SandboxExecReply]]


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def request(
    language: str, code: str, files: dict[str, bytes | str] | None = None, **kw: object
) -> SandboxExecRequest:
    return SandboxExecRequest(
        ctx=RequestContext(tenant="acme", request_id="req-sandbox-test"),
        language=language,
        code=code,
        files=[SandboxFile(path=p, content_b64=b64(c)) for p, c in (files or {}).items()],
        **kw,
    )


@pytest.fixture(scope="session")
def seccomp() -> bytes | None:
    return build_filter()


@pytest.fixture
async def backend(seccomp: bytes | None) -> AsyncIterator[BwrapBackend]:
    if BwrapBackend.missing():
        pytest.fail(f"missing {BwrapBackend.missing()}: apt-get install bubblewrap")
    sandboxes = BwrapBackend(
        LIMITS, seccomp=seccomp, concurrency=4, uid_base=UID_BASE, cgroups=Cgroups.detect()
    )
    yield sandboxes
    await sandboxes.close()


def live_processes(uids: range) -> list[str]:
    """The states of the host's processes of these uids that are not zombies."""
    out = subprocess.run(
        ["ps", "-o", "stat=", "-u", ",".join(map(str, uids))], capture_output=True, text=True
    )
    return [s for s in out.stdout.split() if not s.startswith("Z")]


@pytest.fixture
def run(backend: BwrapBackend) -> Run:
    async def _run(
        language: str, code: str, files: dict[str, bytes | str] | None = None, **kw: object
    ) -> SandboxExecReply:
        return await execute(request(language, code, files, **kw), backend, LIMITS)

    return _run
