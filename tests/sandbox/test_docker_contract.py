"""The Docker backend against a stand-in for the Docker SDK (no engine runs on these machines).

What is checked is the contract with the engine: the isolation options every container gets,
the job going in through put_archive, the report read from stdout, the container and its
volume removed whatever happens, and how the engine's answers are classified.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from typing import Any

import requests

from services.sandbox.adapters.docker_engine import DockerBackend
from services.sandbox.executor import execute
from tests.sandbox.conftest import LIMITS, request


def report(stdout: bytes = b"", exit_code: int | None = 0) -> bytes:
    return json.dumps(
        {
            "exit_code": exit_code,
            "signal": None,
            "timed_out": False,
            "output_exceeded": False,
            "stdout_b64": base64.b64encode(stdout).decode(),
            "stderr_b64": "",
            "files": [{"path": "out.txt", "content_b64": base64.b64encode(b"x").decode()}],
            "files_truncated": False,
        }
    ).encode()


class FakeContainer:
    def __init__(self, engine: FakeEngine, kwargs: dict[str, Any]) -> None:
        self.engine, self.kwargs = engine, kwargs
        self.archives: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.attrs: dict[str, Any] = {"State": {"OOMKilled": engine.oom, "ExitCode": 0}}

    def put_archive(self, path: str, data: bytes) -> bool:
        self.calls.append("put_archive")
        self.archives[path] = data
        return True

    def start(self) -> None:
        self.calls.append("start")

    def wait(self, timeout: float) -> dict[str, int]:
        self.calls.append("wait")
        if self.engine.hang and "kill" not in self.calls:
            raise requests.exceptions.ReadTimeout("read timed out")
        return {"StatusCode": self.engine.status}

    def kill(self) -> None:
        self.calls.append("kill")

    def logs(self, stdout: bool, stderr: bool) -> bytes:
        assert stdout and not stderr
        return self.engine.stdout

    def reload(self) -> None:
        self.calls.append("reload")

    def remove(self, force: bool, v: bool) -> None:
        assert force and v
        self.calls.append("remove")


class FakeVolume:
    def __init__(self, name: str) -> None:
        self.name, self.removed = name, False

    def remove(self, force: bool) -> None:
        self.removed = True


class FakeEngine:
    """containers.create and volumes.create of docker.DockerClient, recorded."""

    def __init__(
        self, stdout: bytes = b"", status: int = 0, hang: bool = False, oom: bool = False
    ) -> None:
        self.stdout, self.status, self.hang, self.oom = stdout, status, hang, oom
        self.created: list[FakeContainer] = []
        self.volume_list: list[FakeVolume] = []
        self.containers, self.volumes = self, self

    def create(self, **kwargs: Any) -> Any:
        if "image" in kwargs:
            self.created.append(FakeContainer(self, kwargs))
            return self.created[-1]
        self.volume_list.append(FakeVolume(kwargs["name"]))
        return self.volume_list[-1]


def backend(engine: FakeEngine) -> DockerBackend:
    return DockerBackend(
        LIMITS, image="python:3.11-slim", concurrency=2, client_factory=lambda: engine
    )


async def test_every_container_is_locked_down() -> None:
    engine = FakeEngine(stdout=report(b"hi\n"))
    reply = await execute(
        request("python", "print('hi')", {"in.txt": "data"}), backend(engine), LIMITS
    )
    assert (reply.status, reply.stdout) == ("ok", "hi\n")
    assert [f.path for f in reply.files] == ["out.txt"]
    (container,) = engine.created
    kw = container.kwargs
    assert kw["cap_drop"] == ["ALL"]
    assert kw["network_mode"] == "none" and kw["network_disabled"] is True
    assert kw["read_only"] is True
    assert kw["user"] == "65534:65534"
    assert kw["pids_limit"] == LIMITS.processes
    assert kw["mem_limit"] == kw["memswap_limit"] == LIMITS.memory_bytes  # no swap
    assert "no-new-privileges:true" in kw["security_opt"]
    assert set(kw["environment"]) == {"PATH"}  # nothing of the platform's environment
    assert kw["tmpfs"]["/work"].startswith(f"size={LIMITS.work_bytes},")
    assert {u["Name"] for u in kw["ulimits"]} == {"cpu", "fsize", "nofile", "core"}
    assert kw["command"][:4] == ["python3", "-I", "-S", "-c"]
    assert "def main()" in kw["command"][4]  # the same runner as bubblewrap's
    # The job goes in as a root-owned, read-only job.json on the per-run volume.
    (volume,) = engine.volume_list
    assert kw["volumes"] == {volume.name: {"bind": "/job", "mode": "rw"}}
    with tarfile.open(fileobj=io.BytesIO(container.archives["/job"])) as tar:
        member = tar.getmember("job.json")
        assert (member.uid, member.mode) == (0, 0o444)
        job = json.load(tar.extractfile(member))  # type: ignore[arg-type]
    assert job["code"] == "print('hi')" and job["files"][0]["path"] == "in.txt"
    assert container.calls == ["put_archive", "start", "wait", "reload", "remove"]
    assert volume.removed


async def test_a_hung_container_is_killed_and_removed() -> None:
    engine = FakeEngine(hang=True, status=137)
    reply = await execute(
        request("python", "while True: pass", timeout_s=1), backend(engine), LIMITS
    )
    assert (reply.status, reply.reason) == ("timeout", "wall_time_limit")
    (container,) = engine.created
    assert "kill" in container.calls and container.calls[-1] == "remove"
    assert engine.volume_list[0].removed


async def test_the_engine_saying_oom_is_a_memory_kill() -> None:
    engine = FakeEngine(stdout=b"", status=137, oom=True)
    reply = await execute(request("python", "x = bytearray(10**10)"), backend(engine), LIMITS)
    assert (reply.status, reply.reason) == ("killed", "memory_limit")


async def test_no_engine_is_a_sandbox_failure_not_a_crash() -> None:
    def no_engine() -> Any:
        raise ConnectionError("Cannot connect to the Docker daemon")

    docker = DockerBackend(LIMITS, image="x", concurrency=1, client_factory=no_engine)
    reply = await execute(request("bash", "true"), docker, LIMITS)
    assert reply.error is not None and reply.error.code == "sandbox_failed"
    assert "Docker daemon" in reply.error.message
