"""Fixtures of the identity tests: an isolated bus prefix (its streams exist, then go)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from libs.bus import ensure_streams, stream_configs
from libs.settings import Settings
from tests.infra import Infra


@pytest.fixture
async def bus_settings(services: Infra, tmp_path: Path) -> AsyncIterator[Settings]:
    settings = Settings(
        home=tmp_path, nats_url=services.nats_url, bus_prefix=f"t{secrets.token_hex(4)}"
    )
    nc = await nats.connect(settings.nats_url)
    await ensure_streams(nc, settings)
    try:
        yield settings
    finally:
        js = nc.jetstream()
        for config in stream_configs(settings):
            with contextlib.suppress(Exception):
                await js.delete_stream(config.name or "")
        await nc.close()
