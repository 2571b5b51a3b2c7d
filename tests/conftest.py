"""Fixtures: real NATS, Redis and PostgreSQL (testcontainers or local), and a real platform."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
import yaml
from nats.aio.client import Client as NatsClient

from libs.settings import Settings
from tests.infra import REPO, Infra, Platform, free_port, infra, platform_env

# Pools only the tests use: one that answers too slowly, one that no worker serves.
TEST_POOLS = {
    "slow": {"engine": "instant", "tokens": 4, "delay_ms": 3000, "timeout_s": 0.5},
    "unserved": {"engine": "instant"},
    # Repeats the user's message in 3-character tokens, one message per token.
    "echo": {"engine": "instant", "echo": True, "chunk_chars": 3, "delay_ms": 2},
    # The same, and a conversation that ends in a tool result gets it back as the answer.
    "echo-tools": {
        "engine": "instant",
        "echo": True,
        "tool_results": True,
        "chunk_chars": 3,
        "delay_ms": 2,
    },
}
TEST_MODELS = [
    {"id": "enclave-slow", "kind": "chat", "pool": "slow"},
    {"id": "enclave-unserved", "kind": "chat", "pool": "unserved"},
    {"id": "enclave-echo", "kind": "chat", "pool": "echo"},
    {"id": "enclave-echo-tools", "kind": "chat", "pool": "echo-tools"},
    # A model with a retrieval default: the tenant's vector store named "kb-default".
    {
        "id": "enclave-echo-kb",
        "kind": "chat",
        "pool": "echo",
        "rag": {"collection": "kb-default", "grounding": True},
    },
]


@pytest.fixture(scope="session")
def services() -> Iterator[Infra]:
    with infra() as found:
        yield found


@pytest.fixture
async def pg_url(services: Infra) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, as an SQLAlchemy asyncpg URL."""
    name = f"enclave_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(services.postgres_admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = services.postgres_admin_url.rsplit("/", 1)[0]
    try:
        yield base.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _platform(services: Infra, home: Path, **extra: str) -> Platform:
    registry = yaml.safe_load((REPO / "deploy" / "models.yaml").read_text())
    registry["pools"].update(TEST_POOLS)
    registry["models"].extend(TEST_MODELS)
    (home / "models.yaml").write_text(yaml.safe_dump(registry))
    port = free_port()
    env = platform_env(
        services,
        home,
        port,
        ENCLAVE_MODELS_FILE=str(home / "models.yaml"),
        ENCLAVE_TRACE_DIR=str(home / "traces"),
        **extra,
    )
    plat = Platform(env=env, home=home, base_url=f"http://127.0.0.1:{port}")
    plat.cli("migrate")
    plat.admin_key = plat.create_key("acme", "admin", rpm=1_000_000)
    return plat


def wait_memory(plat: Platform, timeout: float = 120) -> None:
    """Until the memory service answers through the gateway."""
    plat.wait_memory(timeout)


@pytest.fixture(scope="session")
def platform(services: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The whole platform: router, runtime, gateway and workers for every default pool."""
    plat = _platform(
        services,
        tmp_path_factory.mktemp("platform"),
        # A loaded test machine runs the small model slowly: query rewriting gets time.
        ENCLAVE_MEMORY_REWRITE_TIMEOUT_S="60",
        ENCLAVE_MEMORY_TIMEOUT_S="90",
    )
    try:
        plat.launch(
            ["instant", "smollm2", "minilm", "gemma3", "slow", "echo"],
            ["memory", "sandbox"],
            ["enclave-instant", "smollm2-135m-instruct"],
        )
        plat.wait_model("all-minilm-l6-v2", "embedding")
        plat.wait_model("gemma-3-270m", "completion")
        yield plat
    finally:
        plat.stop_all()


@pytest.fixture
async def nc(services: Infra) -> AsyncIterator[NatsClient]:
    """A plain NATS connection, for stand-ins and for asking a service under test."""
    client = await nats.connect(services.nats_url)
    yield client
    await client.drain()


@pytest.fixture
def inprocess_settings(services: Infra, tmp_path: Path) -> Settings:
    """Settings of a service started in this process: its own bus prefix and home."""
    return Settings(
        nats_url=services.nats_url,
        redis_url=services.redis_url,
        bus_prefix="t" + secrets.token_hex(4),
        home=tmp_path,
    )
