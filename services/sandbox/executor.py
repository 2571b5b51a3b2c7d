"""One exec request, start to reply: admit it, run it on a backend, classify what happened.

The backend is the only part that touches the machine (adapters/bwrap.py, adapters/docker.py);
everything it reports is classified by outcome.py, the same for every backend.
"""

from __future__ import annotations

from typing import Protocol

from libs.errors import ErrorInfo
from libs.events import SandboxExecReply, SandboxExecRequest
from services.sandbox.limits import Job, Limits, admit
from services.sandbox.outcome import Observed, classify


class Backend(Protocol):
    name: str

    async def run(self, job: Job) -> Observed: ...

    def describe(self) -> dict[str, object]: ...

    async def close(self) -> None: ...


async def execute(
    request: SandboxExecRequest, backend: Backend, limits: Limits
) -> SandboxExecReply:
    job = admit(request, limits)
    if isinstance(job, ErrorInfo):
        return SandboxExecReply(status="error", error=job)
    return classify(await backend.run(job))


def audit_attrs(
    request: SandboxExecRequest, reply: SandboxExecReply, backend: str
) -> dict[str, str | int | bool]:
    """What the audit chain keeps of one exec: names and counts, never code or output."""
    attrs: dict[str, str | int | bool] = {
        "tool": request.tool,
        "language": request.language,
        "backend": backend,
        "duration_ms": reply.duration_ms,
        "files_in": len(request.files),
        "files_out": len(reply.files),
        "truncated": reply.truncated,
    }
    if reply.exit_code is not None:
        attrs["exit_code"] = reply.exit_code
    if reply.reason:
        attrs["reason"] = reply.reason[:200]
    if reply.error is not None:
        attrs["error"] = reply.error.code or "error"
    return attrs
