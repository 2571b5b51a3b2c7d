"""Fixtures of the audit tests: an isolated bus prefix and home, and a small platform."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from libs.bus import ensure_streams, stream_configs
from libs.settings import Settings
from tests.conftest import _platform
from tests.infra import Infra, Platform


async def drop_streams(settings: Settings) -> None:
    """Streams of a test prefix would otherwise stay on the shared NATS server."""
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        for config in stream_configs(settings):
            with contextlib.suppress(Exception):
                await js.delete_stream(config.name or "")
    finally:
        await nc.close()


@pytest.fixture
async def bus_settings(services: Infra, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings with their own bus prefix and home; the streams exist and go at the end."""
    settings = Settings(
        home=tmp_path, nats_url=services.nats_url, bus_prefix=f"t{secrets.token_hex(4)}"
    )
    nc = await nats.connect(settings.nats_url)
    await ensure_streams(nc, settings)
    await nc.close()
    try:
        yield settings
    finally:
        await drop_streams(settings)


@pytest.fixture(scope="module")
def audit_platform(services: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Gateway, audit, router, runtime and the instant worker: enough to make audit events."""
    plat = _platform(services, tmp_path_factory.mktemp("audit-platform"))
    try:
        plat.launch(["instant"], ["audit"], ["enclave-instant"])
        yield plat
    finally:
        plat.stop_all()
        import asyncio

        settings = Settings(
            nats_url=plat.env["ENCLAVE_NATS_URL"], bus_prefix=plat.env["ENCLAVE_BUS_PREFIX"]
        )
        asyncio.run(drop_streams(settings))
