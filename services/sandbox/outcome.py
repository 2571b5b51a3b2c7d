"""What happened to a run: ok, error, timeout or killed, and why. Pure: no I/O.

A backend (bubblewrap, Docker) hands over what it saw: the runner's report (runner.py), the
sandbox process's exit status, whether the service's own deadline fired, and whether the
backend could not start a sandbox at all. Every backend is classified the same way here.
"""

from __future__ import annotations

import base64
import binascii
import re
import signal
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from libs.errors import ErrorInfo
from libs.events import SandboxExecReply, SandboxFile

# The last words of a program that hit the memory limit (RLIMIT_AS or a cgroup): Python's
# MemoryError, glibc's and bash's allocation failures.
_OUT_OF_MEMORY = re.compile(
    r"(^MemoryError\b|Cannot allocate memory|xmalloc: cannot allocate|std::bad_alloc)", re.M
)
_CRASHES = {int(s) for s in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL)}
_LIMIT_SIGNALS = {
    int(signal.SIGXCPU): "cpu_limit",
    int(signal.SIGXFSZ): "file_size_limit",
    int(signal.SIGKILL): "killed: memory, CPU or process limit",
}


@dataclass
class Observed:
    """What a backend saw of one run."""

    report: bytes | None  # the runner's stdout; None when it was over its cap
    exit_status: int | None  # the sandbox process: >= 0 an exit code, < 0 a signal
    deadline_hit: bool = False  # the service's own wall-clock backstop fired
    report_overflow: bool = False  # the runner's stdout went past its cap
    failure: str | None = None  # no sandbox could run (the backend's own error)
    oom_killed: bool = False  # the backend says the memory limit ended it (Docker)
    duration_s: float = 0.0


class RunnerReport(BaseModel):
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    output_exceeded: bool = False
    stdout_b64: str = ""
    stderr_b64: str = ""
    files: list[SandboxFile] = []
    files_truncated: bool = False
    setup_error: bool = False  # the input files could not be written


def _text(b64: str) -> str:
    try:
        return base64.b64decode(b64).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def parse_report(raw: bytes | None) -> RunnerReport | None:
    if not raw:
        return None
    try:
        return RunnerReport.model_validate_json(raw)
    except ValidationError:
        return None


def classify(seen: Observed) -> SandboxExecReply:
    duration_ms = round(seen.duration_s * 1000)
    if seen.failure is not None:
        return SandboxExecReply(
            status="error",
            duration_ms=duration_ms,
            error=ErrorInfo(
                status=500,
                message=f"The sandbox could not run the code: {seen.failure}",
                code="sandbox_failed",
            ),
        )
    if seen.deadline_hit:
        return SandboxExecReply(
            status="timeout", reason="wall_time_limit", truncated=True, duration_ms=duration_ms
        )
    if seen.report_overflow:
        return SandboxExecReply(
            status="killed", reason="output_limit", truncated=True, duration_ms=duration_ms
        )
    report = parse_report(seen.report)
    if report is None:
        # The runner never reported: the code killed it, or a limit ended the whole sandbox.
        reason = "memory_limit" if seen.oom_killed else "the sandbox ended before it reported"
        return SandboxExecReply(
            status="killed",
            exit_code=seen.exit_status if (seen.exit_status or 0) >= 0 else None,
            reason=reason,
            duration_ms=duration_ms,
        )
    reply = SandboxExecReply(
        exit_code=report.exit_code,
        stdout=_text(report.stdout_b64),
        stderr=_text(report.stderr_b64),
        files=report.files,
        truncated=report.files_truncated,
        duration_ms=duration_ms,
    )
    if report.files_truncated:
        reply.reason = "files_limit"
    if report.setup_error:
        reply.status, reply.reason = "error", "files_in"
    elif report.timed_out:
        reply.status, reply.reason, reply.truncated = "timeout", "wall_time_limit", True
    elif report.output_exceeded:
        reply.status, reply.reason, reply.truncated = "killed", "output_limit", True
    elif seen.oom_killed:
        reply.status, reply.reason = "killed", "memory_limit"
    elif report.signal is not None:
        name = _signal_name(report.signal)
        if report.signal in _CRASHES:
            reply.status, reply.reason = "error", name
        else:
            reply.status, reply.reason = "killed", _LIMIT_SIGNALS.get(report.signal, name)
    elif report.exit_code == 0:
        reply.status = "ok"
    elif _OUT_OF_MEMORY.search(reply.stderr[-2000:]):
        reply.status, reply.reason = "killed", "memory_limit"
    else:
        reply.status = "error"
    return reply
