"""The bus: a FastStream NatsBroker per service, JetStream streams declared idempotently.

FastStream carries the once-per-request typed events; per-token subjects use the raw
nats-py client underneath (`broker.connection`), which costs a tenth of the CPU per
message (see shared/DEPENDENCIES.md).
"""

from __future__ import annotations

import asyncio

from faststream.nats import JStream, NatsBroker, RetentionPolicy, StorageType
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.api import StorageType as JsStorage
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from libs.settings import Settings


def make_broker(settings: Settings, name: str) -> NatsBroker:
    """A broker without FastStream's logger: even filtered out, it costs ~70 µs a message."""
    return NatsBroker(
        settings.nats_url,
        name=f"enclave-{name}",
        logger=None,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        inbox_prefix=settings.nats_inbox_prefix,
    )


def stream_configs(settings: Settings) -> list[StreamConfig]:
    s = settings.subjects
    return [
        StreamConfig(
            name=s.chat_stream_name,
            subjects=[s.chat_requested],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.stream_replicas,
            max_age=3600.0,
        ),
        StreamConfig(
            name=s.memory_stream_name,
            subjects=[s.memory_store],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.stream_replicas,
        ),
        StreamConfig(
            name=s.audit_stream_name,
            subjects=[s.audit_all],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.stream_replicas,
            # The database is the record; the stream keeps a week to replay from.
            max_age=7 * 86400.0,
        ),
        StreamConfig(
            name=s.agent_stream_name,
            subjects=[s.agent_resume],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.stream_replicas,
        ),
        StreamConfig(
            name=s.trainer_stream_name,
            subjects=[s.trainer_jobs],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.stream_replicas,
        ),
    ]


def jstream(config: StreamConfig) -> JStream:
    """The FastStream handle of a stream that `ensure_streams` already declared."""
    return JStream(config.name or "", subjects=list(config.subjects or []), declare=False)


# What the server answers when another process created the stream between our look and our
# create: "stream name already in use" or "subjects overlap with an existing stream" (the
# latter seen in CI when a worker and the router started in the same instant).
CREATE_RACE_CODES = frozenset({10058, 10065})


async def ensure_streams(nc: NatsClient, settings: Settings, attempts: int = 5) -> None:
    """Create every stream, or bring an existing one to the declared config. Idempotent, and
    safe when several services declare the same streams at once."""
    js = nc.jetstream()
    for config in stream_configs(settings):
        for attempt in range(attempts):
            try:
                await js.stream_info(config.name or "")
            except NotFoundError:
                try:
                    await js.add_stream(config)
                except BadRequestError as exc:
                    if exc.err_code not in CREATE_RACE_CODES or attempt == attempts - 1:
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))  # look again: it exists now
                    continue
            else:
                await js.update_stream(config)
            break


async def key_value(nc: NatsClient, bucket: str, replicas: int = 1) -> KeyValue:
    """A JetStream KV bucket, created (file-backed, one revision per key) if missing."""
    js = nc.jetstream()
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=1, storage=JsStorage.FILE, replicas=replicas)
        )


def event_bytes(event: BaseModel) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()
