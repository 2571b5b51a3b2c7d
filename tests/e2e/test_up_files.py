"""What `enclave up` leaves on disk: ENCLAVE_HOME only its owner may enter (0700), and the
admin key and the audit's secret keys only its owner may read (0600)."""

from __future__ import annotations

import signal
import stat
import time
from pathlib import Path

from tests.infra import Infra, free_port, platform_env, start_up


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _up_with_no_stage(env: dict[str, str], log: Path) -> str:
    """`enclave up` with no stage selected: it prepares the home (schema, keys) and waits."""
    proc = start_up(env, log, "--only", "none")
    try:
        deadline = time.monotonic() + 60
        while b"Enclave is starting" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    return log.read_text()


def test_home_is_0700_and_key_files_0600(services: Infra, tmp_path: Path) -> None:
    home = tmp_path / "fresh" / "home"
    _up_with_no_stage(platform_env(services, home, free_port()), tmp_path / "up.log")
    assert _mode(home) == 0o700
    for name in ("admin.key", "audit.key", "audit.ed25519"):
        assert _mode(home / name) == 0o600, name


def test_an_existing_open_home_is_closed(services: Infra, tmp_path: Path) -> None:
    home = tmp_path / "old"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    out = _up_with_no_stage(platform_env(services, home, free_port()), tmp_path / "up.log")
    assert _mode(home) == 0o700
    assert "is now readable by its owner only (0700)" in out
