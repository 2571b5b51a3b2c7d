"""API keys in SQL: create, look up by key id, revoke. Only hashes are stored."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db.engine import sessions
from libs.db.models import ApiKey
from services.gateway import keys


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    secret_hash: str
    tenant: str
    role: str
    rate_limit_rpm: int | None
    revoked: bool


async def create_key(
    engine: AsyncEngine, tenant: str, role: str, name: str = "", rate_limit_rpm: int | None = None
) -> tuple[StoredKey, str]:
    """Store a new key and return it with its plaintext, which exists nowhere else."""
    if role not in keys.ROLES:
        raise ValueError(f"role must be one of {', '.join(keys.ROLES)}")
    if not tenant:
        raise ValueError("tenant must not be empty")
    new = keys.generate()
    row = ApiKey(
        key_id=new.key_id,
        secret_hash=new.secret_hash,
        tenant=tenant,
        role=role,
        name=name,
        rate_limit_rpm=rate_limit_rpm,
    )
    async with sessions(engine)() as session, session.begin():
        session.add(row)
    return StoredKey(
        new.key_id, new.secret_hash, tenant, role, rate_limit_rpm, False
    ), new.plaintext


async def find_key(engine: AsyncEngine, key_id: str) -> StoredKey | None:
    async with sessions(engine)() as session:
        row = (await session.execute(select(ApiKey).where(ApiKey.key_id == key_id))).scalar()
    if row is None:
        return None
    return StoredKey(
        row.key_id, row.secret_hash, row.tenant, row.role, row.rate_limit_rpm, row.revoked
    )


async def revoke_key(engine: AsyncEngine, key_id: str, tenant: str) -> bool:
    async with sessions(engine)() as session, session.begin():
        row = (
            await session.execute(
                select(ApiKey).where(ApiKey.key_id == key_id, ApiKey.tenant == tenant)
            )
        ).scalar()
        if row is None:
            return False
        row.revoked = True
    return True


@dataclass(frozen=True)
class KeyListing:
    """What `enclave keys list` shows of a key: never its hash."""

    key_id: str
    tenant: str
    role: str
    name: str
    rate_limit_rpm: int | None
    revoked: bool
    created_at: str


async def list_keys(engine: AsyncEngine, tenant: str | None = None) -> list[KeyListing]:
    q = select(ApiKey).order_by(ApiKey.tenant, ApiKey.id)
    if tenant is not None:
        q = q.where(ApiKey.tenant == tenant)
    async with sessions(engine)() as session:
        rows = (await session.execute(q)).scalars().all()
    return [
        KeyListing(
            r.key_id,
            r.tenant,
            r.role,
            r.name,
            r.rate_limit_rpm,
            r.revoked,
            r.created_at.isoformat(timespec="seconds") if r.created_at else "",
        )
        for r in rows
    ]
