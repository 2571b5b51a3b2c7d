"""Keeps the processes of `enclave up` running, and stops them all within a bounded time.

A stage that exits is started again after a backoff (0.5 s, doubling to 30 s; back to
0.5 s once it has stayed up for a minute) while the others keep serving. `stop` sends
SIGTERM to every stage's process group, waits a grace period, then SIGKILLs whatever is
left, so a stage that hangs or ignores SIGTERM cannot hold the platform up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
GRACE_S = 6.0  # SIGTERM, then SIGKILL: with the waits, every process is gone within 10 s
KILL_WAIT_S = 2.0


def backoff_s(failures: int) -> float:
    """The wait before restart number `failures` (1 for the first) of a stage."""
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, failures - 1)))


def _die_with_parent() -> None:
    """In the child: its own process group (Ctrl-C reaches only `up`, which stops the
    stages in order), and SIGTERM when `up` dies, even by SIGKILL (Linux)."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Stage:
    name: str
    cmd: Sequence[str]
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # exits in a row without staying up STABLE_AFTER_S
    restart_at: float | None = None
    restarts: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0


@dataclass
class Supervisor:
    stages: list[Stage]
    say: Callable[[str], None] = field(default=lambda line: print(line, flush=True))
    grace_s: float = GRACE_S

    def start(self, stage: Stage) -> None:
        stage.proc = subprocess.Popen(list(stage.cmd), env=stage.env, preexec_fn=_die_with_parent)
        stage.started_at = time.monotonic()
        stage.restart_at = None

    def start_all(self) -> None:
        for stage in self.stages:
            self.start(stage)
            self.say(f"started {stage.name} (pid {stage.pid})")

    def poll(self) -> None:
        """Restart what exited, once its backoff has passed. Call it often."""
        now = time.monotonic()
        for stage in self.stages:
            if stage.proc is None:
                continue
            if stage.restart_at is None:
                code = stage.proc.poll()
                if code is None:
                    continue
                stage.failures = (
                    1 if now - stage.started_at >= STABLE_AFTER_S else stage.failures + 1
                )
                wait = backoff_s(stage.failures)
                stage.restart_at = now + wait
                self.say(f"{stage.name} exited with {code}; restarting it in {wait:.1f} s")
            elif now >= stage.restart_at:
                self.start(stage)
                stage.restarts += 1
                self.say(f"restarted {stage.name} (pid {stage.pid})")

    def stop(self) -> None:
        """SIGTERM to every stage, SIGKILL after the grace period to what is left."""
        alive = [s for s in self.stages if s.proc is not None and s.proc.poll() is None]
        for stage in alive:
            _signal_group(stage, signal.SIGTERM)
        began = time.monotonic()
        for stage in alive:
            assert stage.proc is not None
            # grace_s is read on every step: a second Ctrl-C (grace 0) ends the wait at once.
            while stage.proc.poll() is None and time.monotonic() - began < self.grace_s:
                time.sleep(0.05)
            if stage.proc.poll() is None:
                self.say(f"{stage.name} did not stop in {self.grace_s:.0f} s; killing it")
        for stage in alive:
            # The group too: whatever a stage started must not outlive it.
            _signal_group(stage, signal.SIGKILL)
        for stage in alive:
            assert stage.proc is not None
            try:
                stage.proc.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                self.say(f"{stage.name} (pid {stage.pid}) survived SIGKILL")


def _signal_group(stage: Stage, sig: int) -> None:
    assert stage.proc is not None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(stage.proc.pid, sig)
