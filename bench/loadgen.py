"""A lean HTTP/1.1 load generator for streamed chat requests (keep-alive, chunked SSE).

httpx costs about a millisecond of CPU per request, which on two cores would be
measured as the platform's cost; this client reads raw bytes and parses only what it
must: the status, the chunked framing, and the first content delta.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson


@dataclass
class Sample:
    ttft: float
    total: float


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    def pct(self, attr: str, q: float) -> float:
        values = sorted(getattr(s, attr) for s in self.samples)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    @property
    def rps(self) -> float:
        return len(self.samples) / self.elapsed if self.elapsed else 0.0


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def chat(self, path: str, key: str, body: dict[str, object]) -> Sample | None:
        assert self.reader is not None and self.writer is not None
        payload = orjson.dumps(body)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        start = time.perf_counter()
        self.writer.write(head + payload)
        status_line = await self.reader.readline()
        chunked = False
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
            if name.lower() == "content-length":
                length = int(value)
        ttft = 0.0
        if not chunked:
            await self.reader.readexactly(length)
            ttft = time.perf_counter() - start
        else:
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                data = await self.reader.readexactly(size + 2)
                if not ttft and b'"content":"' in data:
                    ttft = time.perf_counter() - start
        total = time.perf_counter() - start
        if b" 200 " not in status_line:
            return None
        return Sample(ttft=ttft, total=total)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run_clients(
    host: str,
    port: int,
    key: str,
    body: dict[str, object] | Sequence[dict[str, object]],
    clients: int,
    requests: int | None = None,
    seconds: float | None = None,
    path: str = "/v1/chat/completions",
) -> Result:
    """`clients` connections sending `body` (or the bodies of a list, in turn, across all
    clients) for `requests` requests in all or for `seconds`."""
    result = Result()
    deadline = time.perf_counter() + seconds if seconds else None
    remaining = [requests or 0]
    bodies = [body] if isinstance(body, dict) else list(body)
    sent = itertools.count()

    async def client() -> None:
        conn = Connection(host, port)
        await conn.open()
        try:
            while True:
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                if requests is not None:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                sample = await conn.chat(path, key, bodies[next(sent) % len(bodies)])
                if sample is None:
                    result.errors += 1
                else:
                    result.samples.append(sample)
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.elapsed = time.perf_counter() - start
    return result
