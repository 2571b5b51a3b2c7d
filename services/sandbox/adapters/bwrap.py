"""The default backend: one bubblewrap sandbox per run.

Layers, outermost first (services/sandbox/README.md says what each blocks):
- a cgroup per sandbox where the host allows (adapters/cgroups.py): memory and processes of
  the whole sandbox;
- `prlimit`: CPU seconds, address space, processes, file size, open files, no core dumps;
- `setpriv` (when the service runs as root): a uid of its own per live sandbox, no groups,
  so that the kernel sees no root and no two sandboxes share a uid;
- `bwrap`: new user, pid, network, ipc, uts and cgroup namespaces (no network at all), no
  further user namespaces, every capability dropped, uid/gid 65534 inside, a read-only view
  of /usr only (no /home, /root, /etc/shadow, ENCLAVE_HOME or the repository), a tmpfs work
  dir, /tmp and /dev/shm of fixed size, an empty environment, the seccomp filter
  (libs/seccomp.py), killed with the service; the profile itself is libs/bwrap.py;
- the runner (runner.py) inside: output caps, its own deadline, nothing left running after.
The service keeps a harder deadline and a cap on what it reads behind all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from libs.bwrap import GROUP, PASSWD, memfd
from libs.bwrap import bwrap_argv as sandbox_argv
from services.sandbox.adapters.cgroups import Cgroups, join_command
from services.sandbox.limits import Job, Limits
from services.sandbox.outcome import Observed

log = logging.getLogger("enclave.sandbox")
RUNNER = (Path(__file__).resolve().parent.parent / "runner.py").read_text()
# How long after the run's own deadline the service kills the sandbox regardless.
GRACE_S = 3.0
STDERR_CAP = 65536
# The runner reads its job on stdin.
RUNNER_COMMAND = ("python3", "-I", "-S", "-c", RUNNER)


def bwrap_argv(
    limits: Limits,
    *,
    passwd_fd: int,
    group_fd: int,
    seccomp_fd: int | None,
    host_uid: int | None,
    bwrap: str = "bwrap",
) -> list[str]:
    """The whole command line of one sandbox running the runner (libs/bwrap.py's profile)."""
    return sandbox_argv(
        cpu_s=limits.cpu_s,
        memory_bytes=limits.memory_bytes,
        processes=limits.processes,
        work_bytes=limits.work_bytes,
        passwd_fd=passwd_fd,
        group_fd=group_fd,
        seccomp_fd=seccomp_fd,
        host_uid=host_uid,
        command=RUNNER_COMMAND,
        bwrap=bwrap,
    )


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, bool]:
    """Read to EOF, keeping at most `cap` bytes; True when there was more."""
    buf = bytearray()
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return bytes(buf), False
        buf += chunk
        if len(buf) > cap:
            return bytes(buf[:cap]), True


UID_BLOCK = 256  # the most sandboxes (concurrency + warm) a replica may hold
LOCKS = Path(tempfile.gettempdir())


def claim_uids(base: int, size: int, blocks: int = 4096) -> tuple[int, int]:
    """The first block of host uids that no other process on this host holds; the lock's fd
    (held for the life of the process: the kernel releases it when the process goes)."""
    if size > UID_BLOCK:
        raise ValueError(f"concurrency + warm must stay within {UID_BLOCK}")
    for block in range(blocks):
        first = base + block * UID_BLOCK
        if first < 1 or first + UID_BLOCK > 2**31 - 2:  # tools take uids as signed ints
            break
        fd = os.open(LOCKS / f"enclave-sandbox-uids-{first}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return first, fd
    raise RuntimeError("no free block of sandbox uids on this host")


@dataclass
class Started:
    """A sandbox whose runner waits for its job on stdin."""

    proc: asyncio.subprocess.Process
    uid: int | None
    cgroup: str | None = None
    oom_kills: int = 0  # the cgroup's count before this sandbox


class BwrapBackend:
    """Runs each job in a fresh bubblewrap sandbox; at most `concurrency` at once.

    `warm` sandboxes are started ahead of demand (namespaces set up, the runner's Python
    loaded, waiting on stdin for a job): a run then costs its own program only. Each
    sandbox still runs one job and goes; the pool refills in the background.
    """

    name = "bwrap"

    def __init__(
        self,
        limits: Limits,
        *,
        seccomp: bytes | None,
        concurrency: int,
        uid_base: int,
        warm: int = 0,
        cgroups: Cgroups | None = None,
    ) -> None:
        self.limits = limits
        self.seccomp = seccomp
        self.root = os.geteuid() == 0
        # A cgroup per host uid: only where each sandbox has a uid of its own (root).
        self.cgroups = cgroups if self.root else None
        self.warm = max(0, warm)
        concurrency = max(1, concurrency)
        self._slots = asyncio.Semaphore(concurrency)
        # One host uid per live sandbox (running or warm): none shares its process count.
        # The block is claimed with a lock, so replicas on one host never share a uid.
        size = concurrency + self.warm
        first, claim = claim_uids(uid_base, size) if self.root else (uid_base, None)
        self._claim: int | None = claim
        self.uids = range(first, first + size)
        self._uids: deque[int] = deque(self.uids)
        self._ready: deque[Started] = deque()
        self._starting = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def missing() -> list[str]:
        """The programs this backend needs that the host lacks."""
        return [p for p in ("bwrap", "prlimit", "setpriv") if shutil.which(p) is None]

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "seccomp": self.seccomp is not None,
            "uid": "one per sandbox" if self.root else os.geteuid(),
            "warm": self.warm,
            "cgroups": f"v{self.cgroups.version}" if self.cgroups else None,
        }

    async def run(self, job: Job) -> Observed:
        async with self._slots:
            started = time.monotonic()
            sandbox = self._take_warm()
            self._refill()
            if sandbox is None:
                try:
                    sandbox = await self._start()
                except OSError as exc:
                    return Observed(None, None, failure=str(exc), duration_s=0.0)
            try:
                seen = await self._feed_and_watch(sandbox, job, started)
                if self.cgroups is not None and sandbox.cgroup is not None:
                    seen.oom_killed = self.cgroups.oom_kills(sandbox.cgroup) > sandbox.oom_kills
                return seen
            finally:
                if sandbox.proc.returncode is None:  # cancelled or failed half-way
                    await _end(sandbox.proc)
                if sandbox.uid is not None:  # only once nothing of the sandbox is left
                    self._uids.append(sandbox.uid)

    async def close(self) -> None:
        """End the warm sandboxes (they would end with the service anyway)."""
        for task in list(self._tasks):
            task.cancel()
        while self._ready:
            warm = self._ready.popleft()
            if warm.proc.stdin is not None:  # its runner reads EOF and goes
                warm.proc.stdin.close()
            await _end(warm.proc, wait_s=1.0)
        if self._claim is not None:
            os.close(self._claim)  # the block is free again for another replica
            self._claim = None

    def _take_warm(self) -> Started | None:
        while self._ready:
            sandbox = self._ready.popleft()
            if sandbox.proc.returncode is None:
                return sandbox
            if sandbox.proc.stdin is not None:  # a runner left behind reads EOF and goes
                sandbox.proc.stdin.close()
            if sandbox.uid is not None:  # it died waiting: not used
                self._uids.append(sandbox.uid)
        return None

    def _refill(self) -> None:
        while len(self._ready) + self._starting < self.warm:
            self._starting += 1
            task = asyncio.create_task(self._start_warm())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_warm(self) -> None:
        try:
            self._ready.append(await self._start())
        except Exception:
            log.exception("could not start a warm sandbox")
        finally:
            self._starting -= 1

    async def _start(self) -> Started:
        uid = self._uids.popleft() if self.root else None
        fds = [memfd("enclave-passwd", PASSWD), memfd("enclave-group", GROUP)]
        if self.seccomp is not None:
            fds.append(memfd("enclave-seccomp", self.seccomp))
        argv = bwrap_argv(
            self.limits,
            passwd_fd=fds[0],
            group_fd=fds[1],
            seccomp_fd=fds[2] if self.seccomp is not None else None,
            host_uid=uid,
        )
        cgroup, oom_kills = None, 0
        if self.cgroups is not None and uid is not None:
            cgroup = f"u{uid}"
            procs = self.cgroups.prepare(cgroup, self.limits.memory_bytes, self.limits.processes)
            oom_kills = self.cgroups.oom_kills(cgroup)
            argv = [*join_command(procs), *argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=fds,
                start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            )
        except OSError:
            if uid is not None:
                self._uids.append(uid)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        return Started(proc, uid, cgroup, oom_kills)

    async def _feed_and_watch(self, sandbox: Started, job: Job, started: float) -> Observed:
        stdin = sandbox.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(job.runner_input(self.limits)).encode())
            async with asyncio.timeout(job.timeout_s + GRACE_S):
                await stdin.drain()
            stdin.close()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the sandbox died (or hangs) before its job: _watch sees to it
        return await self._watch(sandbox.proc, job, started)

    async def _watch(self, proc: asyncio.subprocess.Process, job: Job, started: float) -> Observed:
        assert proc.stdout is not None and proc.stderr is not None
        out_task = asyncio.ensure_future(_read_capped(proc.stdout, self.limits.report_bytes()))
        err_task = asyncio.ensure_future(_read_capped(proc.stderr, STDERR_CAP))
        deadline_hit = False
        try:
            async with asyncio.timeout(job.timeout_s + GRACE_S):
                report, overflow = await out_task
                if overflow:
                    _kill(proc)
                await proc.wait()
        except TimeoutError:
            deadline_hit = True
            _kill(proc)
            report, overflow = b"", False
        await _end(proc)
        out_task.cancel()
        try:
            async with asyncio.timeout(1.0):
                errors, _ = await err_task
        except (TimeoutError, asyncio.CancelledError):
            errors = b""
        return Observed(
            report=None if overflow else report,
            exit_status=proc.returncode,
            deadline_hit=deadline_hit,
            report_overflow=overflow,
            failure=_failure(report, errors, proc.returncode),
            duration_s=time.monotonic() - started,
        )


def _kill(proc: asyncio.subprocess.Process) -> None:
    # bwrap dies, its child gets SIGKILL (--die-with-parent) and with it the pid namespace.
    # Never a process that was reaped already: its number may belong to another one now.
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


async def _end(proc: asyncio.subprocess.Process, wait_s: float = 5.0) -> None:
    """Wait for the sandbox to go; kill it if it does not; never wait without end."""
    for _ in range(2):
        try:
            async with asyncio.timeout(wait_s):
                await asyncio.shield(proc.wait())
            return
        except TimeoutError:
            _kill(proc)
    log.error("sandbox process %s did not exit after SIGKILL", proc.pid)


_TOOLS: Sequence[bytes] = (b"bwrap:", b"prlimit:", b"setpriv:")


def _failure(report: bytes, errors: bytes, status: int | None) -> str | None:
    """The backend's own error, when no runner ever ran (never the code's stderr)."""
    if report or status == 0:
        return None
    text = errors.strip()
    if any(text.startswith(tool) for tool in _TOOLS):
        return text.decode(errors="replace")[:500]
    return None
