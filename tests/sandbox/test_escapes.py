"""Escape attempts on the real bubblewrap backend: each one contained, with a clear result.

Every test checks first that what it attacks exists on the host, so that a pass means the
sandbox stopped it, not that there was nothing to find.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from services.sandbox.adapters.bwrap import BwrapBackend
from services.sandbox.executor import execute
from services.sandbox.limits import Limits
from tests.sandbox.conftest import LIMITS, UID_BASE, Run, live_processes, request

READ = (
    "try:\n    print(open({path!r}).read())\n"
    "except OSError as exc:\n    print(type(exc).__name__, exc.errno)\n"
)


def read_attempt(path: str) -> str:
    return READ.format(path=path)


async def test_etc_shadow_is_not_there(run: Run) -> None:
    assert Path("/etc/shadow").exists()
    reply = await run("python", read_attempt("/etc/shadow"))
    assert reply.status == "ok", reply
    assert reply.stdout.strip() == "FileNotFoundError 2"
    # /etc holds only what programs need: a passwd and group of two entries, the loader's
    # cache, alternatives; nothing of the host's accounts or keys.
    reply = await run("bash", "ls /etc; cat /etc/passwd")
    assert "shadow" not in reply.stdout and "ssh" not in reply.stdout
    assert "sandbox:x:65534:65534" in reply.stdout


async def test_the_hosts_home_is_not_there(run: Run) -> None:
    home = Path.home()
    secret = home / f".enclave-sandbox-test-{os.getpid()}"
    secret.write_text("host secret")
    try:
        reply = await run("python", read_attempt(str(secret)))
        assert reply.stdout.strip() == "FileNotFoundError 2", reply
        listing = await run("bash", "ls -a /root /home 2>&1; echo done")
        assert "No such file or directory" in listing.stdout
        assert secret.name not in listing.stdout
    finally:
        secret.unlink()


async def test_the_platforms_home_and_environment_are_not_there(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The platform's state (ENCLAVE_HOME: keys, database) and its checkout.
    (tmp_path / "admin.key").write_text("sk-enclave-secret")
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path))
    monkeypatch.setenv("ENCLAVE_DATABASE_URL", "postgresql://user:secret@db/enclave")
    repo = Path(__file__).resolve().parents[2]
    for path in (tmp_path / "admin.key", repo / "libs" / "settings.py"):
        reply = await run("python", read_attempt(str(path)))
        assert reply.stdout.strip() == "FileNotFoundError 2", (path, reply)
    reply = await run("python", "import os\nprint(sorted(os.environ))")
    assert "ENCLAVE" not in reply.stdout and "secret" not in reply.stdout


async def test_proc_1_environ_holds_nothing_of_the_platform(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENCLAVE_SECRET_TOKEN", "s3cr3t")
    reply = await run(
        "python",
        "import os\n"
        "try:\n    print(repr(open('/proc/1/environ', 'rb').read()))\n"
        "except OSError as exc:\n    print(type(exc).__name__)\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n",
    )
    assert reply.status == "ok", reply
    first, pids = reply.stdout.splitlines()
    assert "s3cr3t" not in first and "ENCLAVE" not in first
    # A pid namespace of its own: pid 1 is the sandbox's init, and only a handful exist.
    assert len(eval(pids)) <= 4


async def test_no_network_not_even_the_hosts_nats(run: Run) -> None:
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 4222)) == 0, "NATS listens on the host"
    reply = await run(
        "python",
        "import socket\n"
        "for host, port in (('127.0.0.1', 4222), ('10.0.0.1', 80)):\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2)\n"
        "        print('connected')\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__, exc.errno)\n",
    )
    assert reply.status == "ok", reply
    assert "connected" not in reply.stdout
    assert reply.stdout.splitlines() == ["PermissionError 13"] * 2  # seccomp refuses AF_INET
    bash = await run("bash", "echo hi > /dev/tcp/127.0.0.1/4222 && echo connected")
    assert bash.status == "error" and "connected" not in bash.stdout


async def test_without_seccomp_the_empty_network_namespace_still_holds() -> None:
    backend = BwrapBackend(LIMITS, seccomp=None, concurrency=1, uid_base=UID_BASE)
    reply = await execute(
        request(
            "python",
            "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 4222), timeout=2)\n"
            "    print('connected')\nexcept OSError as exc:\n    print(exc.errno)\n",
        ),
        backend,
        LIMITS,
    )
    assert reply.stdout.strip() == "111", reply  # ECONNREFUSED: a loopback with nothing on it


async def test_fork_bomb_is_contained(run: Run, backend: BwrapBackend) -> None:
    # The classic: the process limit refuses the forks, and nothing outlives the script.
    reply = await run("bash", ":(){ :|:& };:", timeout_s=3)
    assert "Resource temporarily unavailable" in reply.stderr, reply
    # One that never stops trying: every process forks until the limit, forever.
    code = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    reply = await run("python", code, timeout_s=3)
    assert (reply.status, reply.reason) == ("timeout", "wall_time_limit"), reply
    assert reply.duration_ms < 3000 + 4000
    # Nothing of either is left on the host, and the next sandbox runs as usual.
    assert live_processes(backend.uids) == []
    assert (await run("python", "print('fine')")).stdout == "fine\n"


async def test_memory_bomb_is_contained(run: Run) -> None:
    reply = await run("python", "blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))\n")
    assert (reply.status, reply.reason) == ("killed", "memory_limit"), reply
    assert "MemoryError" in reply.stderr
    reply = await run("python", "x = bytearray(4 * 1024**3)")
    assert (reply.status, reply.reason) == ("killed", "memory_limit"), reply


async def test_memory_bomb_over_many_processes_meets_the_sandboxs_cgroup(
    backend: BwrapBackend,
) -> None:
    if backend.cgroups is None:
        pytest.skip("this host lets the service create no cgroups: per-process rlimits only")
    # Each process stays under its own address-space limit; together they are 900 MiB.
    code = (
        "import subprocess, sys\n"
        "hog = 'import time; x = b\"\\\\1\" * (150 * 2**20); time.sleep(2)'\n"
        "procs = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(6)]\n"
        "print([p.wait() for p in procs])\n"
    )
    reply = await execute(request("python", code, timeout_s=15), backend, LIMITS)
    assert (reply.status, reply.reason) == ("killed", "memory_limit"), reply
    assert "-9" in reply.stdout  # SIGKILL by the cgroup's OOM killer, not a timeout
    assert reply.duration_ms < 15_000


async def test_infinite_loop_times_out(run: Run) -> None:
    reply = await run(
        "python", "print('looping', flush=True)\nwhile True:\n    pass\n", timeout_s=1.5
    )
    assert (reply.status, reply.reason) == ("timeout", "wall_time_limit"), reply
    assert reply.stdout == "looping\n"  # what it wrote before the deadline comes back
    assert 1500 <= reply.duration_ms < 1500 + 3000


async def test_cpu_limit_kills_a_busy_program() -> None:
    limits = Limits(cpu_s=1, timeout_s=10, max_timeout_s=10)
    backend = BwrapBackend(limits, seccomp=None, concurrency=1, uid_base=UID_BASE)
    reply = await execute(request("python", "while True:\n    pass\n"), backend, limits)
    assert (reply.status, reply.reason) == ("killed", "cpu_limit"), reply


async def test_writing_outside_the_work_dir_fails(run: Run) -> None:
    code = (
        "import os\n"
        "for path in ('/usr/evil', '/etc/evil', '/evil', '/proc/evil', '/run/enclave/job.json'):\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print(path, 'written')\n"
        "    except OSError as exc:\n"
        "        print(path, type(exc).__name__)\n"
    )
    reply = await run("python", code)
    assert reply.status == "ok", reply
    assert "written" not in reply.stdout, reply.stdout
    assert len(reply.stdout.splitlines()) == 5
    # The work dir itself is a small tmpfs: filling it fails instead of filling the host.
    # One big file: the file-size limit stops the writer.
    fill = await run("bash", "head -c 100000000 /dev/zero > big; echo $?", timeout_s=10)
    assert "File size limit exceeded" in fill.stderr, fill
    # Many smaller ones: the tmpfs is full (8 MiB here), the host's disk is untouched.
    code = "for i in range(100):\n    open(f'f{i}', 'wb').write(bytes(2**20))\n"
    fill = await run("python", code, timeout_s=10)
    assert fill.status == "error" and "No space left on device" in fill.stderr, fill
    assert fill.truncated and fill.reason == "files_limit"  # 2 MiB of files come back at most
    # The other writable places are small tmpfs mounts too.
    for where in ("/tmp", "/dev/shm"):
        code = f"for i in range(100):\n    open(f'{where}/f{{i}}', 'wb').write(bytes(2**20))\n"
        fill = await run("python", code, timeout_s=10)
        assert "No space left on device" in fill.stderr, (where, fill)


async def test_gigabytes_of_output_are_cut_off(run: Run) -> None:
    reply = await run("bash", "yes 'all work and no play'", timeout_s=10)
    assert (reply.status, reply.reason, reply.truncated) == ("killed", "output_limit", True)
    assert len(reply.stdout.encode()) == LIMITS.output_bytes
    assert reply.duration_ms < 5000
    reply = await run("python", "import sys\nwhile True:\n    sys.stderr.write('e' * 65536)\n")
    assert (reply.status, reply.reason) == ("killed", "output_limit"), reply
    assert len(reply.stderr) == LIMITS.output_bytes


async def test_ptrace_of_a_sibling_is_refused(run: Run) -> None:
    code = (
        "import ctypes, subprocess, os, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "sibling = subprocess.Popen(['sleep', '30'])\n"
        "time.sleep(0.1)\n"
        "for pid in (sibling.pid, os.getppid()):\n"
        "    rc = libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH\n"
        "    print(rc, ctypes.get_errno())\n"
        "try:\n"
        "    open(f'/proc/{os.getppid()}/mem', 'rb').read(1)\n"
        "    print('read the runner')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
        "sibling.kill()\n"
    )
    reply = await run("python", code)
    assert reply.status == "ok", reply
    assert reply.stdout.splitlines() == ["-1 1", "-1 1", "PermissionError"]  # EPERM


async def test_no_capabilities_no_new_privileges_and_a_seccomp_filter(run: Run) -> None:
    reply = await run(
        "bash", "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status"
    )
    fields = dict(line.split(":\t") for line in reply.stdout.splitlines())
    assert {k: v for k, v in fields.items() if k.startswith("Cap")} == {
        k: "0000000000000000" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    }
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"  # filter mode
    nested = await run("bash", "unshare -r id 2>&1; echo rc=$?")
    assert "rc=0" not in nested.stdout  # no new user namespace from inside
