"""The pure core: which requests are admitted, and how what happened is classified."""

from __future__ import annotations

import base64
import json
import signal

from libs.errors import ErrorInfo
from libs.events import SandboxExecRequest
from services.sandbox.limits import Job, Limits, admit, check_path
from services.sandbox.outcome import Observed, classify
from tests.sandbox.conftest import request

LIMITS = Limits(max_timeout_s=30, files_count=2, files_bytes=10)


def refused(req: SandboxExecRequest) -> ErrorInfo:
    result = admit(req, LIMITS)
    assert isinstance(result, ErrorInfo), result
    assert result.status == 400
    return result


def test_admits_a_plain_request_with_the_default_timeout() -> None:
    job = admit(request("python", "print(1)", {"a/b.txt": "hi"}), LIMITS)
    assert isinstance(job, Job)
    assert job.timeout_s == LIMITS.timeout_s
    assert job.runner_input(LIMITS)["files"] == [
        {"path": "a/b.txt", "content_b64": base64.b64encode(b"hi").decode()}
    ]


def test_refuses_timeouts_outside_the_limit() -> None:
    assert refused(request("bash", "true", timeout_s=31)).param == "timeout_s"
    assert refused(request("bash", "true", timeout_s=0)).param == "timeout_s"
    assert refused(request("bash", "true", timeout_s=-1)).param == "timeout_s"


def test_refuses_paths_that_leave_the_work_dir() -> None:
    for path in ("../x", "/etc/passwd", "a/../../x", "a//b", "./x", "a b", "x\n"):
        assert not check_path(path), path
        assert refused(request("bash", "true", {path: "x"})).param == "files.0.path"
    assert check_path("data/in.csv") and check_path(".hidden")


def test_refuses_too_many_or_too_large_files_and_bad_base64() -> None:
    assert refused(request("bash", "true", {"a": "1", "b": "2", "c": "3"})).param == "files"
    assert refused(request("bash", "true", {"a": "x" * 11})).param == "files"
    req = request("bash", "true", {"a": "1"})
    req.files[0].content_b64 = "not base64!"
    assert refused(req).param == "files.0.content_b64"
    req = request("bash", "true", {"a": "1", "b": "2"})
    req.files[1].path = "a"
    assert "twice" in refused(req).message
    req = request("bash", "true", {"d/x": "1", "d": "2"})
    assert refused(req).param == "files.0.path"  # "d" cannot be a file and a directory


def report(**fields: object) -> bytes:
    base: dict[str, object] = {
        "exit_code": 0,
        "signal": None,
        "timed_out": False,
        "output_exceeded": False,
        "stdout_b64": base64.b64encode(b"out").decode(),
        "stderr_b64": "",
        "files": [],
        "files_truncated": False,
    }
    base.update(fields)
    return json.dumps(base).encode()


def test_classifies_each_ending() -> None:
    assert classify(Observed(report(), 0)).status == "ok"
    assert classify(Observed(report(), 0)).stdout == "out"
    assert classify(Observed(report(exit_code=3), 3)).status == "error"
    timeout = classify(Observed(report(timed_out=True, exit_code=None, signal=9), 0))
    assert (timeout.status, timeout.reason) == ("timeout", "wall_time_limit")
    flood = classify(Observed(report(output_exceeded=True), 0))
    assert (flood.status, flood.reason, flood.truncated) == ("killed", "output_limit", True)
    cpu = classify(Observed(report(exit_code=None, signal=int(signal.SIGXCPU)), 0))
    assert (cpu.status, cpu.reason) == ("killed", "cpu_limit")
    segv = classify(Observed(report(exit_code=None, signal=int(signal.SIGSEGV)), 0))
    assert (segv.status, segv.reason) == ("error", "SIGSEGV")
    oom = base64.b64encode(b"Traceback...\nMemoryError\n").decode()
    memory = classify(Observed(report(exit_code=1, stderr_b64=oom), 1))
    assert (memory.status, memory.reason) == ("killed", "memory_limit")


def test_classifies_what_the_service_saw_without_a_report() -> None:
    assert classify(Observed(b"", None, deadline_hit=True)).status == "timeout"
    assert classify(Observed(None, -9, report_overflow=True)).reason == "output_limit"
    assert classify(Observed(b"", -9)).status == "killed"
    assert classify(Observed(b"garbage", 0)).status == "killed"
    assert classify(Observed(b"", 0, oom_killed=True)).reason == "memory_limit"
    failed = classify(Observed(None, 1, failure="bwrap: No permissions"))
    assert failed.error is not None and failed.error.status == 500
    assert failed.error.code == "sandbox_failed"
