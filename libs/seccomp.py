"""The sandbox's seccomp filter (services/sandbox, and the agent runtime's stdio MCP servers):
classic BPF built with libseccomp (PyPI `pyseccomp`, ctypes
over Debian's libseccomp2), handed to bubblewrap with `--seccomp FD`.

Default allow, with a deny list: what no code interpreter needs and what kernel exploits and
escapes reach for. Denied calls fail with EPERM, so a program gets a clear "Operation not
permitted" instead of dying. Where libseccomp is missing the filter is None and the service
says so at start (the other layers still hold).
"""

from __future__ import annotations

import errno
import logging
import socket
import tempfile

log = logging.getLogger("enclave.seccomp")

# Tracing and reading other processes; kernel modules, mounts and namespaces; the kernel's
# wider attack surface (BPF, perf, userfaultfd, io_uring, keyrings); raw I/O ports.
DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "setns",
    "unshare",
    "swapon",
    "swapoff",
    "reboot",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "acct",
    "quotactl",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "syslog",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "clock_adjtime",
)


def build_filter() -> bytes | None:
    """The filter as BPF bytes, or None when libseccomp cannot be used here."""
    try:
        import pyseccomp as sc

        flt = sc.SyscallFilter(defaction=sc.ALLOW)
        for name in DENIED:
            try:
                flt.add_rule(sc.ERRNO(errno.EPERM), name)
            except (OSError, RuntimeError, ValueError):
                log.debug("seccomp: %s unknown on this architecture", name)
        # Sockets of the local machine only (AF_UNIX: pipes between the code's own
        # processes); the network namespace is empty anyway, this refuses at the call.
        flt.add_rule(sc.ERRNO(errno.EACCES), "socket", sc.Arg(0, sc.NE, int(socket.AF_UNIX)))
        with tempfile.TemporaryFile() as f:
            flt.export_bpf(f)
            f.seek(0)
            return f.read()
    except Exception as exc:  # no library, an old kernel, an architecture it does not know
        log.warning("seccomp unavailable (%s): the sandbox runs without a syscall filter", exc)
        return None
