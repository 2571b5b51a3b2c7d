"""Which tenants opted in to learning from feedback, in a JetStream KV bucket
(`learning_bucket_name`): one key per tenant that opted in.

The trainer writes it (when a tenant admin changes the setting, and at start from its SQL
settings, so the bucket never disagrees for long with what it stores); every runtime
replica watches it and logs a finished turn (`trainer.turns`) only for a tenant whose key
is there. So the text of a tenant that did not opt in never leaves the runtime for the
trainer, and its turns cost no transcript and no publish. A runtime that starts reads the
bucket's current keys before its first turn (the watch delivers them first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from libs.bus import key_value
from libs.subjects import Subjects

log = logging.getLogger("enclave.learning_optins")
ON = b"1"


class LearningOptIns:
    def __init__(self, nc: NatsClient, subjects: Subjects, replicas: int = 1) -> None:
        self.nc = nc
        self.bucket = subjects.learning_bucket_name
        self.replicas = replicas
        self.tenants: set[str] = set()
        self._kv: KeyValue | None = None
        self._watch: asyncio.Task[None] | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await key_value(self.nc, self.bucket, self.replicas)
        return self._kv

    # -- the trainer --

    async def set(self, tenant: str, opted_in: bool) -> None:
        kv = await self.kv()
        if opted_in:
            await kv.put(tenant, ON)
        else:
            with contextlib.suppress(KeyNotFoundError):
                await kv.delete(tenant)

    # -- a runtime --

    def opted_in(self, tenant: str) -> bool:
        return tenant in self.tenants

    async def watch(self) -> None:
        """Follow the bucket from now on; returns once its current keys are read."""
        kv = await self.kv()
        watcher = await kv.watchall()
        ready = asyncio.Event()

        async def follow() -> None:
            async for entry in watcher:
                if entry is None:  # the initial values have all been delivered
                    ready.set()
                    continue
                if entry.operation in ("DEL", "PURGE") or entry.value != ON:
                    self.tenants.discard(entry.key)
                else:
                    self.tenants.add(entry.key)

        self._watch = asyncio.create_task(follow())
        async with asyncio.timeout(30):
            await ready.wait()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
            self._watch = None
