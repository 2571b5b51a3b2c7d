"""What may run, and within which limits: the checks on a request, before any sandbox starts.

Pure: no I/O. A refused request gets an `ErrorInfo` naming the field (400), never a sandbox.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Any

from libs.errors import ErrorInfo
from libs.events import SandboxExecRequest
from libs.settings import Settings

MAX_CODE_BYTES = 256 * 1024
# A relative path of plain segments: no "..", no absolute path, no odd characters.
_PATH = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@dataclass(frozen=True)
class Limits:
    """The limits every sandbox of a replica runs under (from ENCLAVE_SANDBOX_* settings)."""

    timeout_s: float = 10.0
    max_timeout_s: float = 60.0
    cpu_s: int = 30
    memory_bytes: int = 512 * 2**20
    processes: int = 64
    output_bytes: int = 2**20
    files_bytes: int = 10 * 2**20
    files_count: int = 100
    work_bytes: int = 64 * 2**20

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            timeout_s=settings.sandbox_timeout_s,
            max_timeout_s=settings.sandbox_max_timeout_s,
            cpu_s=settings.sandbox_cpu_s,
            memory_bytes=settings.sandbox_memory_mb * 2**20,
            processes=settings.sandbox_processes,
            output_bytes=settings.sandbox_output_bytes,
            files_bytes=settings.sandbox_files_bytes,
            files_count=settings.sandbox_files_count,
            work_bytes=settings.sandbox_work_mb * 2**20,
        )

    def report_bytes(self) -> int:
        """The most a runner's report may take (base64 of outputs and files, and slack)."""
        return math.ceil((2 * self.output_bytes + self.files_bytes) * 4 / 3) + 65536


@dataclass(frozen=True)
class Job:
    """One admitted run: the request's code and files, and the limits it gets."""

    language: str
    code: str
    files: list[dict[str, str]]
    timeout_s: float

    def runner_input(self, limits: Limits) -> dict[str, Any]:
        """The job document the in-sandbox runner reads (runner.py)."""
        return {
            "language": self.language,
            "code": self.code,
            "files": self.files,
            "timeout_s": self.timeout_s,
            "output_bytes": limits.output_bytes,
            "files_bytes": limits.files_bytes,
            "files_count": limits.files_count,
        }


def _bad(message: str, param: str) -> ErrorInfo:
    return ErrorInfo(status=400, message=message, code="invalid_value", param=param)


def check_path(path: str) -> bool:
    return bool(_PATH.fullmatch(path)) and all(part not in (".", "..") for part in path.split("/"))


def admit(request: SandboxExecRequest, limits: Limits) -> Job | ErrorInfo:
    """The job to run, or why the request is refused."""
    if len(request.code.encode()) > MAX_CODE_BYTES:
        return _bad(f"`code` is longer than {MAX_CODE_BYTES} bytes.", "code")
    timeout = limits.timeout_s if request.timeout_s is None else request.timeout_s
    if not (timeout > 0 and timeout <= limits.max_timeout_s):
        return _bad(f"`timeout_s` must be within (0, {limits.max_timeout_s:g}].", "timeout_s")
    if len(request.files) > limits.files_count:
        return _bad(f"At most {limits.files_count} files may go in.", "files")
    seen: set[str] = set()
    total = 0
    for i, item in enumerate(request.files):
        if not check_path(item.path):
            return _bad(
                f"`files[{i}].path` must be a relative path of letters, digits, `.`, `_`, "
                "`-` and `/`, without `..`.",
                f"files.{i}.path",
            )
        if item.path in seen:
            return _bad(f"`files[{i}].path` appears twice.", f"files.{i}.path")
        seen.add(item.path)
        try:
            total += len(base64.b64decode(item.content_b64, validate=True))
        except (binascii.Error, ValueError):
            return _bad(f"`files[{i}].content_b64` is not base64.", f"files.{i}.content_b64")
    for i, item in enumerate(request.files):
        parents = item.path.split("/")
        if any("/".join(parents[:n]) in seen for n in range(1, len(parents))):
            return _bad(f"`files[{i}].path` is inside a path that is a file.", f"files.{i}.path")
    if total > limits.files_bytes:
        return _bad(f"The files come to more than {limits.files_bytes} bytes.", "files")
    return Job(
        language=request.language,
        code=request.code,
        files=[f.model_dump() for f in request.files],
        timeout_s=timeout,
    )
