"""The Docker backend (ENCLAVE_SANDBOX_BACKEND=docker): one throwaway container per run.

For hosts that run Docker (or gVisor's runsc behind it): no network (`network_mode=none`),
every capability dropped, no-new-privileges, a read-only root, uid 65534, `pids_limit`,
memory without swap, CPU and file-size ulimits, a tmpfs work dir, an empty environment.
The same runner as with bubblewrap (runner.py) runs inside, so the outcome is classified
the same way. The job document goes in through a per-run volume mounted at /job (owned by
root: the code cannot write there); the runner's report comes back on the container's stdout.

The Docker SDK is synchronous: each run takes a thread, at most `concurrency` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import secrets
import tarfile
import time
from collections.abc import Callable
from typing import Any

from libs.bwrap import SANDBOX_UID
from services.sandbox.adapters.bwrap import GRACE_S, RUNNER
from services.sandbox.limits import Job, Limits
from services.sandbox.outcome import Observed

LABEL = "enclave.sandbox"


def container_config(limits: Limits, image: str, volume: str) -> dict[str, Any]:
    """The keyword arguments of `containers.create` for one run (pure)."""
    from docker.types import Ulimit

    uid = f"{SANDBOX_UID}:{SANDBOX_UID}"
    return {
        "image": image,
        "command": ["python3", "-I", "-S", "-c", RUNNER, "/job/job.json"],
        "user": uid,
        "working_dir": "/work",
        "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin"},
        "network_mode": "none",
        "network_disabled": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "pids_limit": limits.processes,
        "mem_limit": limits.memory_bytes,
        "memswap_limit": limits.memory_bytes,
        "nano_cpus": 1_000_000_000,
        "ulimits": [
            Ulimit(name="cpu", soft=limits.cpu_s, hard=limits.cpu_s + 1),
            Ulimit(name="fsize", soft=limits.work_bytes, hard=limits.work_bytes),
            Ulimit(name="nofile", soft=256, hard=256),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "tmpfs": {
            "/work": f"size={limits.work_bytes},uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700",
            "/tmp": f"size={16 * 2**20},mode=1777",
        },
        "volumes": {volume: {"bind": "/job", "mode": "rw"}},
        "hostname": "sandbox",
        "init": True,  # a reaper as pid 1: the runner's kill(-1) reaches everything else
        "labels": {LABEL: "1"},
        "detach": True,
    }


def job_archive(document: dict[str, Any]) -> bytes:
    """job.json as the tar stream `put_archive` takes (root-owned, read-only)."""
    data = json.dumps(document).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("job.json")
        info.size, info.mode, info.uid, info.gid = len(data), 0o444, 0, 0
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class DockerBackend:
    name = "docker"

    def __init__(
        self,
        limits: Limits,
        *,
        image: str,
        concurrency: int,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.limits = limits
        self.image = image
        self._factory = client_factory
        self._client: Any = None
        self._slots = asyncio.Semaphore(max(1, concurrency))

    def client(self) -> Any:
        if self._client is None:
            if self._factory is None:
                import docker

                self._client = docker.from_env()
            else:
                self._client = self._factory()
        return self._client

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "image": self.image}

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)

    async def run(self, job: Job) -> Observed:
        async with self._slots:
            return await asyncio.to_thread(self._run, job)

    def _run(self, job: Job) -> Observed:
        started = time.monotonic()
        try:
            client = self.client()
            volume = client.volumes.create(
                name=f"enclave-sandbox-{secrets.token_hex(8)}", labels={LABEL: "1"}
            )
        except Exception as exc:  # no engine, no permission
            return Observed(None, None, failure=f"docker: {exc}", duration_s=0.0)
        container = None
        try:
            container = client.containers.create(
                **container_config(self.limits, self.image, volume.name)
            )
            container.put_archive("/job", job_archive(job.runner_input(self.limits)))
            container.start()
            deadline_hit = False
            try:
                status = container.wait(timeout=job.timeout_s + GRACE_S)
            except Exception:  # requests' ReadTimeout or ConnectionError: past the deadline
                deadline_hit = True
                container.kill()
                status = container.wait(timeout=10)
            report = b"" if deadline_hit else container.logs(stdout=True, stderr=False)
            container.reload()
            state = container.attrs.get("State", {})
            overflow = len(report) > self.limits.report_bytes()
            code = int(status.get("StatusCode", state.get("ExitCode", 1)))
            return Observed(
                report=None if overflow else report,
                # Docker reports a signal as 128 + its number.
                exit_status=-(code - 128) if code > 128 else code,
                deadline_hit=deadline_hit,
                report_overflow=overflow,
                oom_killed=bool(state.get("OOMKilled")),
                duration_s=time.monotonic() - started,
            )
        except Exception as exc:
            return Observed(
                None, None, failure=f"docker: {exc}", duration_s=time.monotonic() - started
            )
        finally:
            if container is not None:
                with contextlib.suppress(Exception):
                    container.remove(force=True, v=True)
            with contextlib.suppress(Exception):
                volume.remove(force=True)
