"""ENCLAVE_OTLP_ENDPOINT: real router and worker processes send their spans, batched, over
OTLP/HTTP in the JSON encoding. The receiver here stands in for an OpenTelemetry
collector (a third party): it checks the request's path, content type and shape."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.context import RequestContext
from libs.events import ChatMessage, GenerateRequest, GenerationParams
from libs.generation import GenerationClient, RouteCache
from libs.rpc import Bus, ReplyRouter
from libs.settings import Settings
from tests.infra import Infra, Platform, free_port, platform_env

TRACE = "7c3e1a2b9d8f4e6a0b1c2d3e4f5a6b7c"
PARENT = "1122334455667788"


class Collector:
    """What an OTLP/HTTP receiver is sent: (path, content type, body) per request."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                collector.received.append(
                    (self.path, self.headers.get("Content-Type", ""), json.loads(body))
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def spans(self) -> list[tuple[str, dict[str, Any]]]:
        """(service.name, span) of everything received."""
        found = []
        for _, _, body in list(self.received):
            for rs in body["resourceSpans"]:
                attrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
                service = attrs["service.name"]["stringValue"]
                for scope in rs["scopeSpans"]:
                    found += [(service, span) for span in scope["spans"]]
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    thread = threading.Thread(target=c.server.serve_forever, daemon=True)
    thread.start()
    yield c
    c.server.shutdown()
    c.server.server_close()


async def test_spans_reach_an_otlp_collector(
    services: Infra, tmp_path: Path, collector: Collector
) -> None:
    env = platform_env(
        services, tmp_path, free_port(), ENCLAVE_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}"
    )
    plat = Platform(env=env, home=tmp_path, base_url="")
    settings = Settings(
        home=tmp_path, nats_url=services.nats_url, bus_prefix=env["ENCLAVE_BUS_PREFIX"]
    )
    nc = await nats.connect(services.nats_url)
    try:
        plat.start("router", "inference_router")
        plat.start("worker", "worker", "instant")
        bus = Bus(nc, settings)
        deltas = await ReplyRouter(nc, settings.subjects.inference_deltas("otlp", "")).start()
        client = GenerationClient(bus, deltas, RouteCache(0), upstream_timeout_s=30)
        ctx = RequestContext(
            tenant="acme", request_id="req-otlp", traceparent=f"00-{TRACE}-{PARENT}-01"
        )
        done = False
        deadline = time.monotonic() + 180
        while not done and time.monotonic() < deadline:  # until router and worker serve
            route = await client.route(ctx, "enclave-instant", "chat")
            if route.pool is None:
                await asyncio.sleep(0.5)
                continue
            request = GenerateRequest(
                ctx=ctx,
                model="enclave-instant",
                messages=[ChatMessage(role="user", content="hi")],
                params=GenerationParams(max_tokens=4),
            )
            generation = client.start(request, route)
            try:
                event = await generation.next()
                done = event.done and event.error is None
            except Exception:
                await asyncio.sleep(0.5)
            finally:
                generation.close()
        assert done, plat.logs()[-3000:]

        def ours() -> dict[tuple[str, str], dict[str, Any]]:
            return {
                (service, s["name"]): s
                for service, s in collector.spans()
                if s["traceId"] == TRACE and s["parentSpanId"] == PARENT
            }

        wanted = {
            ("enclave-inference_router", "inference.route"),
            ("enclave-worker-instant", "generate"),
        }
        while not wanted <= set(ours()) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # the batch processor sends every few seconds
        spans = ours()
        assert wanted <= set(spans), (collector.spans(), plat.logs()[-3000:])
    finally:
        await nc.close()
        plat.stop_all()

    assert {path for path, _, _ in collector.received} == {"/v1/traces"}
    assert {kind for _, kind, _ in collector.received} == {"application/json"}
    route = spans[("enclave-inference_router", "inference.route")]
    generate = spans[("enclave-worker-instant", "generate")]
    assert route["kind"] == 2 and generate["kind"] == 1  # SERVER, INTERNAL as OTLP numbers them
    for span in (route, generate):
        assert len(span["spanId"]) == 16 and int(span["spanId"], 16)
        assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 0
        attrs = {a["key"]: a["value"] for a in span["attributes"]}
        assert attrs["enclave.request_id"] == {"stringValue": "req-otlp"}
    attrs = {a["key"]: a["value"] for a in generate["attributes"]}
    assert int(attrs["gen_ai.usage.output_tokens"]["intValue"]) > 0
    assert not (tmp_path / "traces").exists()  # no trace dir: the JSON-lines file stays off
