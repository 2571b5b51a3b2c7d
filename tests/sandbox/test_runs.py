"""Happy paths on the real bubblewrap backend: Python, bash, files in and out."""

from __future__ import annotations

import base64
import os

import pytest

from libs.events import SandboxExecRequest, SandboxFile
from services.sandbox.adapters.bwrap import BwrapBackend
from services.sandbox.executor import execute
from services.sandbox.limits import Limits
from tests.sandbox.conftest import LIMITS, UID_BASE, Run, b64, live_processes, request


async def test_python_prints_and_exits(run: Run) -> None:
    reply = await run("python", "import sys\nprint(6 * 7)\nprint('to stderr', file=sys.stderr)")
    assert (reply.status, reply.exit_code) == ("ok", 0), reply
    assert reply.stdout == "42\n"
    assert reply.stderr == "to stderr\n"
    assert reply.error is None and reply.duration_ms > 0


async def test_bash_runs_with_a_clean_environment_as_a_plain_user(run: Run) -> None:
    reply = await run("bash", "echo hello; id -u; id -g; pwd; env | sort | cut -d= -f1")
    assert reply.status == "ok", reply
    lines = reply.stdout.split()
    assert lines[:4] == ["hello", "65534", "65534", "/work"]
    assert set(lines[4:]) <= {
        "PATH", "HOME", "TMPDIR", "LANG", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED", "PWD", "SHLVL", "_", "OLDPWD",
    }  # fmt: skip


async def test_a_failing_program_is_an_error_with_its_exit_code(run: Run) -> None:
    reply = await run("python", "raise SystemExit(3)")
    assert (reply.status, reply.exit_code) == ("error", 3)
    reply = await run("python", "1/0")
    assert reply.status == "error" and "ZeroDivisionError" in reply.stderr


async def test_files_go_in_and_new_or_changed_files_come_out(run: Run) -> None:
    code = (
        "import helper, os\n"
        "data = open('data/in.csv').read()\n"
        "os.makedirs('out', exist_ok=True)\n"
        "open('out/total.txt', 'w').write(str(helper.total(data)))\n"
        "open('out/raw.bin', 'wb').write(bytes(range(256)))\n"
        "open('changed.txt', 'a').write(' more')\n"
    )
    files = {
        "helper.py": "def total(text):\n    return sum(int(x) for x in text.split(','))\n",
        "data/in.csv": "1,2,3,4",
        "changed.txt": "before",
    }
    reply = await run("python", code, files)
    assert reply.status == "ok", reply
    out = {f.path: base64.b64decode(f.content_b64) for f in reply.files}
    # Inputs left as they were do not come back; new and changed files do.
    assert out == {
        "changed.txt": b"before more",
        "out/raw.bin": bytes(range(256)),
        "out/total.txt": b"10",
    }


async def test_bash_reads_and_writes_files(run: Run) -> None:
    reply = await run(
        "bash", "wc -l < in.txt > count.txt; tr a-z A-Z < in.txt", {"in.txt": "a\nb\n"}
    )
    assert reply.status == "ok", reply
    assert reply.stdout == "A\nB\n"
    assert [(f.path, base64.b64decode(f.content_b64)) for f in reply.files] == [
        ("count.txt", b"2\n")
    ]


async def test_files_that_cannot_be_reported_are_left_out_and_said_so(run: Run) -> None:
    # A name that is not UTF-8, and a path longer than 255 characters.
    code = "touch $'bad-\\xff' good.txt; D=$(printf 'd%.0s/' {1..130}); mkdir -p $D; touch ${D}f"
    reply = await run("bash", code)
    assert reply.status == "ok", reply
    assert [f.path for f in reply.files] == ["good.txt"]
    assert (reply.truncated, reply.reason) == (True, "files_limit")


async def test_background_processes_do_not_outlive_the_code(run: Run) -> None:
    reply = await run("bash", "sleep 60 & echo started", timeout_s=10)
    assert reply.status == "ok", reply
    assert reply.stdout == "started\n"
    assert reply.duration_ms < 5000  # the sleep was killed, not waited for


async def test_sandboxes_run_side_by_side(run: Run) -> None:
    import asyncio

    replies = await asyncio.gather(*(run("python", f"print({i})") for i in range(6)))
    assert [r.stdout for r in replies] == [f"{i}\n" for i in range(6)]


async def test_warm_sandboxes_are_fresh_for_every_run(seccomp: bytes | None) -> None:
    backend = BwrapBackend(LIMITS, seccomp=seccomp, concurrency=2, uid_base=UID_BASE, warm=2)
    code = "ls /tmp /work; touch /tmp/left-behind /work/left-behind; echo $$"
    try:
        replies = [await execute(request("bash", code), backend, LIMITS) for _ in range(4)]
        # Nothing of an earlier run is seen by a later one.
        assert all("left-behind" not in r.stdout for r in replies), replies
        assert all(r.status == "ok" for r in replies)
        assert len(backend._ready) + backend._starting == 2  # the pool refills
    finally:
        await backend.close()
    assert live_processes(backend.uids) == []


def test_replicas_on_one_host_claim_different_uids(seccomp: bytes | None) -> None:
    if os.geteuid() != 0:
        pytest.skip("uids of its own per sandbox only when the service runs as root")
    first = BwrapBackend(LIMITS, seccomp=seccomp, concurrency=4, uid_base=UID_BASE, warm=2)
    second = BwrapBackend(LIMITS, seccomp=seccomp, concurrency=4, uid_base=UID_BASE, warm=2)
    assert not set(first.uids) & set(second.uids)
    assert min(first.uids) >= UID_BASE and min(second.uids) >= UID_BASE


async def test_input_files_that_do_not_fit_are_an_error_that_says_so() -> None:
    # Within the file limits, but larger than a 1 MiB work dir.
    limits = Limits(files_bytes=4 * 2**20, work_bytes=2**20)
    backend = BwrapBackend(limits, seccomp=None, concurrency=1, uid_base=UID_BASE)
    req = request("bash", "echo never")
    req = SandboxExecRequest(
        **{**req.model_dump(), "files": [SandboxFile(path="big", content_b64=b64(bytes(2**21)))]}
    )
    try:
        reply = await execute(req, backend, limits)
    finally:
        await backend.close()
    assert (reply.status, reply.reason, reply.stdout) == ("error", "files_in", ""), reply
    assert "could not write the files in" in reply.stderr
