"""`enclave keys ...`: create, list and revoke API keys from the command line.

Each of them is audited (`key.created`, `admin.keys.list`, `key.revoked`, actor
`cli:<login>`): published on the bus, or kept in `<home>/audit-outbox/` for a running
service to send when NATS is not there. A revocation is also announced on `keys.revoked`
(core NATS) for gateway replicas to drop the key from their caches at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.audit import (
    AuditPublisher,
    operator_context,
    outbox_dir,
    record_admin_action,
    record_key_created,
    record_key_revoked,
)
from libs.events import KeyRevoked
from libs.settings import Settings

CONNECT_TIMEOUT_S = 2.0


def add_parsers(keys_sub: Any) -> None:
    """`list` and `revoke` next to `create` (services/cli.py makes that one)."""
    p_list = keys_sub.add_parser("list", help="list keys (never their secrets)")
    p_list.add_argument("--tenant", default=None, help="only this tenant's keys")
    p_list.add_argument("--revoked", action="store_true", help="show revoked keys too")
    p_revoke = keys_sub.add_parser("revoke", help="revoke a key: it stops working")
    p_revoke.add_argument("key_id", help="the key's id (`enclave keys list` shows them)")
    p_revoke.add_argument("--tenant", default=None, help="the key's tenant (checked if given)")


@dataclass
class Tools:
    engine: AsyncEngine
    nc: NatsClient | None
    publisher: AuditPublisher


@asynccontextmanager
async def tools(settings: Settings) -> AsyncIterator[Tools]:
    from libs.db.engine import make_engine, migrate_async

    await migrate_async(settings)
    engine = make_engine(settings.sqlalchemy_url)
    nc: NatsClient | None = None
    try:
        nc = await nats.connect(
            settings.nats_url,
            connect_timeout=CONNECT_TIMEOUT_S,
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
    except Exception as exc:  # no bus: the audit events wait in the outbox
        print(f"NATS not reachable ({exc}); audit events kept in the outbox", file=sys.stderr)
    publisher = AuditPublisher(nc, settings.subjects, "cli", outbox_dir(settings.home))
    try:
        yield Tools(engine, nc, publisher)
    finally:
        await publisher.close()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        await engine.dispose()


async def create(settings: Settings, tenant: str, role: str, name: str, rpm: int | None) -> str:
    from services.gateway.adapters.sql_keys import create_key

    async with tools(settings) as t:
        stored, plaintext = await create_key(t.engine, tenant, role, name, rpm)
        await record_key_created(
            t.publisher,
            operator_context(tenant),
            key_id=stored.key_id,
            tenant=tenant,
            role=role,
            rate_limit_rpm=rpm,
        )
    return plaintext


async def list_(settings: Settings, tenant: str | None, revoked: bool) -> list[str]:
    from services.gateway.adapters.sql_keys import list_keys

    async with tools(settings) as t:
        found = [k for k in await list_keys(t.engine, tenant) if revoked or not k.revoked]
        for each in sorted({k.tenant for k in found} | ({tenant} if tenant else set())):
            await record_admin_action(
                t.publisher,
                operator_context(each),
                "keys.list",
                attrs={"keys": sum(1 for k in found if k.tenant == each)},
            )
    rows = [("KEY_ID", "TENANT", "ROLE", "RPM", "STATE", "CREATED", "NAME")]
    rows += [
        (
            k.key_id,
            k.tenant,
            k.role,
            "" if k.rate_limit_rpm is None else str(k.rate_limit_rpm),
            "revoked" if k.revoked else "active",
            k.created_at,
            k.name,
        )
        for k in found
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
        for r in rows
    ]


async def revoke(settings: Settings, key_id: str, tenant: str | None) -> tuple[bool, str]:
    """(revoked, why not); audited whether or not the key was found."""
    from services.gateway.adapters.sql_keys import find_key, revoke_key

    async with tools(settings) as t:
        stored = await find_key(t.engine, key_id)
        if stored is None or (tenant is not None and stored.tenant != tenant):
            where = tenant or (stored.tenant if stored else None)
            if where:
                await record_key_revoked(
                    t.publisher, operator_context(where), key_id=key_id, tenant=where, found=False
                )
            return False, f"no key {key_id}" + (f" in tenant {tenant}" if tenant else "")
        done = await revoke_key(t.engine, key_id, stored.tenant)
        await record_key_revoked(
            t.publisher,
            operator_context(stored.tenant),
            key_id=key_id,
            tenant=stored.tenant,
            found=done,
        )
        if done and t.nc is not None:
            with contextlib.suppress(Exception):
                await t.nc.publish(
                    settings.subjects.keys_revoked,
                    KeyRevoked(key_id=key_id, tenant=stored.tenant).model_dump_json().encode(),
                )
                await t.nc.flush(timeout=2)
        return done, "" if done else f"no key {key_id}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.keys_command == "create":
        print(asyncio.run(create(settings, args.tenant, args.role, args.name, args.rpm)))
        return 0
    if args.keys_command == "list":
        for line in asyncio.run(list_(settings, args.tenant, args.revoked)):
            print(line)
        return 0
    if args.keys_command == "revoke":
        done, why = asyncio.run(revoke(settings, args.key_id, args.tenant))
        if not done:
            print(why, file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
        return 0
    print(f"unknown keys command {args.keys_command}", file=sys.stderr)
    return 2
