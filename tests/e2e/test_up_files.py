"""What `enclave up` leaves on disk: ENCLAVE_HOME only its owner may enter (0700), and the
admin key and the audit's secret keys only its owner may read (0600)."""

from __future__ import annotations

import json
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


def test_bus_passwords_are_kept_and_a_new_service_gets_one(tmp_path: Path) -> None:
    from libs.settings import Settings
    from services.bus_permissions import USERS
    from services.up import own_bus

    home = tmp_path / "home"
    (home / "bus").mkdir(parents=True)
    kept = {"gateway": "old-gateway-secret", "redis": "old-redis-secret"}
    (home / "bus" / "passwords.json").write_text(json.dumps(kept))
    settings = Settings(
        home=home,
        nats_url=f"nats://127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    bus = own_bus(settings)  # nothing listens there: up would run its own servers
    assert bus.nats and bus.redis
    assert [s.name for s in bus.stages] == ["nats-server", "redis-server"]
    assert set(bus.passwords) == {*USERS, "redis"}
    assert bus.passwords["gateway"] == "old-gateway-secret"
    assert bus.nats_url("gateway").startswith("nats://gateway:old-gateway-secret@127.0.0.1:")
    assert "old-redis-secret" in bus.env("memory")["ENCLAVE_REDIS_URL"]
    assert "ENCLAVE_REDIS_URL" not in bus.env("worker") or (
        "old-redis-secret" not in bus.env("worker")["ENCLAVE_REDIS_URL"]
    )
    stored = home / "bus" / "passwords.json"
    assert json.loads(stored.read_text()) == bus.passwords
    for name in ("passwords.json", "nats.conf", "redis.conf"):
        assert _mode(home / "bus" / name) == 0o600, name
