"""Audit keys: created once with mode 0600, rotated without breaking older entries."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libs.signing import trusted_keys
from services.audit.adapters.keys import (
    HmacKeySource,
    ensure_keys,
    parse_env_keys,
    rotate_hmac_key,
)
from services.audit.chain import GENESIS, ChainVerifier, extend
from tests.audit.helpers import events
from tests.infra import Platform, platform_env


def test_keys_are_created_once_private_and_rotate(tmp_path: Path) -> None:
    paths = (tmp_path / "audit.key", tmp_path / "audit.ed25519", tmp_path / "audit.pub")
    assert ensure_keys(*paths) == list(paths)
    for private in paths[:2]:
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    before = [p.read_bytes() for p in paths]
    assert ensure_keys(*paths) == []  # never overwritten
    assert [p.read_bytes() for p in paths] == before
    assert len(trusted_keys([paths[2]])) == 1

    source = HmacKeySource(paths[0])
    old = source.current()
    first = extend("acme", 0, GENESIS, events(3), old)
    new_id = rotate_hmac_key(paths[0])
    rotated = source.current()  # a running service picks the new key up
    assert rotated.active == new_id != old.active
    second = extend("acme", 3, first[-1].hash, events(3, start=3), rotated)
    verifier = ChainVerifier(keys=rotated)
    assert all(verifier.add_entry(e) for e in first + second)
    assert stat.S_IMODE(os.stat(paths[0]).st_mode) == 0o600


def test_env_keys_replace_the_file() -> None:
    keys = parse_env_keys("old:" + "01" * 32 + ",new:" + "02" * 32)
    assert keys.active == "new" and set(keys.keys) == {"old", "new"}


def test_cli_creates_the_keys(services: object, tmp_path: Path) -> None:
    plat = Platform(env=platform_env(services, tmp_path, 0), home=tmp_path, base_url="")  # type: ignore[arg-type]
    out = plat.cli("audit", "keys")
    assert "audit.key" in out and "audit.pub" in out
    assert stat.S_IMODE(os.stat(tmp_path / "audit.key").st_mode) == 0o600
    assert plat.cli("audit", "keys") == ""
