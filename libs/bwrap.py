"""The bubblewrap profile of a sandbox, as one command line (pure, apart from looking at /).

Used by the sandbox service (services/sandbox/adapters/bwrap.py: one run of untrusted code)
and by the agent runtime for stdio MCP servers (a long-lived process under the same
profile). Outermost first: `prlimit` (CPU seconds, address space, processes, file size,
open files, no core dumps); `setpriv` when a host uid is given (no root on the host, no
groups); `bwrap` with new user, pid, network, ipc, uts and cgroup namespaces (no network at
all, not even loopback), no further user namespaces, every capability dropped, uid/gid
65534 inside, a read-only view of /usr (and of the given host paths) only, tmpfs `/work`,
`/tmp` and `/dev/shm` of fixed size, an empty environment, the root remounted read-only,
the seccomp filter (libs/seccomp.py) when given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

SANDBOX_UID = 65534
# What of /etc a program may need: alternatives (awk, ...), the loader's cache, the time zone.
ETC_FILES = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")
PASSWD = b"root:x:0:0:root:/:/usr/sbin/nologin\nsandbox:x:65534:65534:sandbox:/work:/bin/bash\n"
GROUP = b"root:x:0:\nsandbox:x:65534:\n"
SMALL_TMPFS = 16 * 2**20


def _root_binds() -> list[str]:
    """/usr read-only, and /bin, /lib... as the host has them (links on merged-/usr)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    for name in ETC_FILES:
        if (Path("/etc") / name).exists():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return args


def bwrap_argv(
    *,
    cpu_s: int,
    memory_bytes: int,
    processes: int,
    work_bytes: int,
    passwd_fd: int,
    group_fd: int,
    seccomp_fd: int | None,
    host_uid: int | None,
    command: Sequence[str],
    ro_paths: Sequence[str] = (),
    as_pid_1: bool = True,
    bwrap: str = "bwrap",
) -> list[str]:
    """The whole command line of one sandbox running `command` in `/work`.

    `ro_paths`: host paths shown read-only at the same place (after the tmpfs mounts, so a
    path under /work or /tmp is shown too). `as_pid_1`: the command is the pid namespace's
    init (the sandbox's runner); otherwise bwrap's own init reaps for it.
    """
    argv = [
        "prlimit",
        f"--cpu={cpu_s}:{cpu_s + 1}",
        f"--as={memory_bytes}:{memory_bytes}",
        f"--nproc={processes}:{processes}",
        f"--fsize={work_bytes}:{work_bytes}",
        "--nofile=256:256",
        "--core=0:0",
        "--",
    ]
    if host_uid is not None:
        argv += [
            "setpriv",
            f"--reuid={host_uid}",
            f"--regid={host_uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ]
    argv += [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
    ]
    if as_pid_1:
        # The command is the pid namespace's init: the code cannot kill it, and bwrap
        # returns only once the kernel has ended every process of the namespace.
        argv.append("--as-pid-1")
    argv += [
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
        *_root_binds(),
        "--ro-bind-data",
        str(passwd_fd),
        "/etc/passwd",
        "--ro-bind-data",
        str(group_fd),
        "/etc/group",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        # /dev/shm (POSIX shared memory, multiprocessing) would be an unbounded tmpfs.
        "--size",
        str(SMALL_TMPFS),
        "--tmpfs",
        "/dev/shm",
        "--perms",
        "0777",
        "--size",
        str(work_bytes),
        "--tmpfs",
        "/work",
        "--perms",
        "0777",
        "--size",
        str(SMALL_TMPFS),
        "--tmpfs",
        "/tmp",
    ]
    for path in ro_paths:
        argv += ["--ro-bind", path, path]
    # The root is bwrap's own tmpfs, owned by the sandbox's uid: make it read-only
    # (the /work and /tmp mounts stay writable).
    argv += ["--remount-ro", "/"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--chdir", "/work", "--", *command]
    return argv


def memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
