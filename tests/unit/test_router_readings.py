"""The router's per-tenant readings of the database: a restart of PostgreSQL does not stop
every chat, and a change that was announced is never answered from an old reading."""

from __future__ import annotations

import pytest

from services.inference_router.routes import PerTenant


class Database:
    def __init__(self) -> None:
        self.value = "allow m1"
        self.up = True
        self.reads = 0

    async def load(self, tenant: str) -> str:
        self.reads += 1
        if not self.up:
            raise ConnectionRefusedError(111, "Connection refused")
        return f"{tenant}: {self.value}"


async def test_an_expired_reading_stays_in_use_while_the_database_is_down() -> None:
    db = Database()
    readings = PerTenant(db.load, ttl_s=0.0)
    assert await readings.get("acme") == "acme: allow m1"
    db.up = False
    # Its time is up and the database cannot be read: the last reading answers.
    assert await readings.get("acme") == "acme: allow m1"
    assert db.reads == 2, "the database was asked again first"
    # A tenant never read has nothing to fall back on: the error is the answer.
    with pytest.raises(ConnectionRefusedError):
        await readings.get("globex")
    db.up, db.value = True, "allow m2"
    assert await readings.get("acme") == "acme: allow m2"


async def test_a_forgotten_reading_is_never_served_again() -> None:
    db = Database()
    readings = PerTenant(db.load, ttl_s=60.0)
    await readings.get("acme")
    db.up = False
    readings.forget("acme")  # models.changed: the tenant's access changed
    with pytest.raises(ConnectionRefusedError):
        await readings.get("acme")
