"""The supervisor of `enclave up`, with real processes and real signals: a stage that dies
is started again while the others keep running; stop() ends even a stage that ignores
SIGTERM, within 10 s."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from services.supervisor import Stage, Supervisor, backoff_s

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# Ignores SIGTERM (and SIGINT), and says so (creates the file argv[1]) once it does.
STUBBORN = (
    "import pathlib, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "pathlib.Path(sys.argv[1]).touch()\n"
    "time.sleep(600)\n"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_backoff_doubles_to_a_cap() -> None:
    assert [backoff_s(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_s(100) == 30.0


def test_a_killed_stage_is_restarted_while_the_others_keep_running() -> None:
    lines: list[str] = []
    a, b = Stage("a", SLEEPER), Stage("b", SLEEPER)
    sup = Supervisor([a, b], say=lines.append)
    sup.start_all()
    try:
        first_a, first_b = a.pid, b.pid
        os.kill(first_a, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while a.restarts == 0:
            assert time.monotonic() < deadline, lines
            sup.poll()
            time.sleep(0.05)
        assert a.pid != first_a and _alive(a.pid)
        assert b.pid == first_b and _alive(first_b) and b.restarts == 0
        assert any("a exited with -9; restarting it in 0.5 s" in line for line in lines), lines
        # Dying again at once doubles the wait.
        os.kill(a.pid, signal.SIGKILL)
        while a.restart_at is None:
            sup.poll()
            time.sleep(0.05)
        assert "restarting it in 1.0 s" in lines[-1], lines
    finally:
        sup.stop()
    assert not _alive(a.pid) and not _alive(b.pid)


def test_stop_kills_a_stage_that_ignores_sigterm_within_10_s(tmp_path: Path) -> None:
    lines: list[str] = []
    ignoring = tmp_path / "ignoring"
    stubborn = Stage("stubborn", [sys.executable, "-c", STUBBORN, str(ignoring)])
    polite = Stage("polite", SLEEPER)
    sup = Supervisor([stubborn, polite], say=lines.append)
    sup.start_all()
    deadline = time.monotonic() + 30
    while not ignoring.exists():  # until the stubborn one has installed its handlers
        assert time.monotonic() < deadline
        time.sleep(0.05)
    began = time.monotonic()
    sup.stop()
    took = time.monotonic() - began
    assert took < 10, took
    assert not _alive(stubborn.pid) and not _alive(polite.pid)
    assert any("stubborn did not stop" in line for line in lines), lines
    assert stubborn.proc is not None and stubborn.proc.returncode == -signal.SIGKILL
    assert polite.proc is not None and polite.proc.returncode == -signal.SIGTERM


def test_a_second_ctrl_c_kills_at_once(tmp_path: Path) -> None:
    ignoring = tmp_path / "ignoring"
    stubborn = Stage("stubborn", [sys.executable, "-c", STUBBORN, str(ignoring)])
    sup = Supervisor([stubborn], say=lambda line: None, grace_s=60.0)
    sup.start_all()
    deadline = time.monotonic() + 30
    while not ignoring.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopper = threading.Thread(target=sup.stop)
    began = time.monotonic()
    stopper.start()
    time.sleep(0.5)
    sup.grace_s = 0.0  # what `enclave up` does on a second SIGINT
    stopper.join(timeout=10)
    assert not stopper.is_alive()
    assert time.monotonic() - began < 3
    assert not _alive(stubborn.pid)
