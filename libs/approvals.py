"""Paused agent runs and their approvals, in a JetStream KV bucket (`approvals_bucket_name`).

One key per approval, `<tenant>.<approval id>`, so a tenant reads only its own (a list
scans the bucket's keys: fine for what waits on people, not for millions). Every change
is a compare-and-set on the entry's revision: of two approvers deciding at once, one
wins and the other is told it was decided already. The runtime writes a record when a
run pauses and when the resumed run ends; the gateway when an approver decides. The
bucket is file-backed: a paused run outlives any restart.
"""

from __future__ import annotations

import secrets

from nats.aio.client import Client as NatsClient
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

from libs.bus import key_value
from libs.events import ApprovalRecord
from libs.subjects import Subjects


def new_approval_id() -> str:
    return "apr_" + secrets.token_hex(12)


def _key(tenant: str, approval_id: str) -> str:
    return f"{tenant}.{approval_id}"


class ApprovalStore:
    def __init__(self, nc: NatsClient, subjects: Subjects, replicas: int = 1) -> None:
        self.nc = nc
        self.bucket = subjects.approvals_bucket_name
        self.replicas = replicas
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await key_value(self.nc, self.bucket, self.replicas)
        return self._kv

    async def create(self, record: ApprovalRecord) -> None:
        kv = await self.kv()
        await kv.create(_key(record.tenant, record.id), record.model_dump_json().encode())

    async def get(self, tenant: str, approval_id: str) -> tuple[ApprovalRecord, int] | None:
        """The record and its revision (for `update`), or None."""
        if not approval_id.startswith("apr_") or not approval_id[4:].isalnum():
            return None
        kv = await self.kv()
        try:
            entry = await kv.get(_key(tenant, approval_id))
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return ApprovalRecord.model_validate_json(entry.value), entry.revision or 0

    async def update(self, record: ApprovalRecord, revision: int) -> bool:
        """Write `record` if nobody changed it since `revision`; False otherwise."""
        kv = await self.kv()
        try:
            await kv.update(
                _key(record.tenant, record.id), record.model_dump_json().encode(), last=revision
            )
        except KeyWrongLastSequenceError:
            return False
        return True

    async def list(self, tenant: str) -> list[ApprovalRecord]:
        kv = await self.kv()
        try:
            # Filtered on this side: nats-server before 2.10 ignores a key filter.
            keys = await kv.keys()
        except NoKeysError:
            return []
        prefix = _key(tenant, "")
        found = []
        for key in keys:
            if not key.startswith(prefix):
                continue
            got = await self.get(tenant, key[len(prefix) :])
            if got is not None:
                found.append(got[0])
        return sorted(found, key=lambda r: r.created_at)
