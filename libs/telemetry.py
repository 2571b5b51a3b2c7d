"""OpenTelemetry tracing: a tracer per service, the W3C trace context carried on the bus.

Each hop starts a span as the child of the `traceparent` it received (in the event's
request context, mirrored in the NATS headers) and hands its own on. With
ENCLAVE_TRACE_DIR set, each process writes its spans as JSON lines to
`<dir>/<service>-<pid>.jsonl` (the default: a collector tails these; no outbound call is
made). With ENCLAVE_OTLP_ENDPOINT set, spans are also sent, batched, to that OTLP/HTTP
endpoint (an OpenTelemetry collector's :4318) in the OTLP JSON encoding. With neither,
no span is recorded and the received traceparent travels on unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol, TypeVar

import httpx
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from libs.context import TRACEPARENT_HEADER, RequestContext

log = logging.getLogger("enclave.telemetry")


class HasCtx(Protocol):
    ctx: RequestContext


Req = TypeVar("Req", bound=HasCtx)
Rep = TypeVar("Rep")


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("a", buffering=1)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            ctx = span.get_span_context()
            if ctx is None:
                continue
            record = {
                "name": span.name,
                "service": span.resource.attributes.get("service.name"),
                "trace_id": format(ctx.trace_id, "032x"),
                "span_id": format(ctx.span_id, "016x"),
                "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
                "start": span.start_time,
                "end": span.end_time,
                "attributes": dict(span.attributes or {}),
            }
            self._file.write(json.dumps(record) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


class OtlpJsonExporter(SpanExporter):
    """OTLP over HTTP, JSON encoding (the OTLP specification's `application/json` on
    `/v1/traces`): what an OpenTelemetry collector, Jaeger or Tempo receive on 4318."""

    def __init__(self, endpoint: str, timeout_s: float = 10.0) -> None:
        base = endpoint.rstrip("/")
        self.url = base if base.endswith("/v1/traces") else f"{base}/v1/traces"
        self._client = httpx.Client(timeout=timeout_s)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            r = self._client.post(self.url, json=otlp_json(spans))
        except httpx.HTTPError as exc:
            log.warning("OTLP export to %s failed: %s", self.url, exc)
            return SpanExportResult.FAILURE
        if r.status_code >= 300:
            log.warning("OTLP export to %s refused: %d", self.url, r.status_code)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._client.close()


def _otlp_value(value: object) -> dict[str, object]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64: a string in proto3's JSON mapping
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": _otlp_attributes(value)}}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return {"arrayValue": {"values": [_otlp_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _otlp_attributes(attrs: Mapping[str, object] | None) -> list[dict[str, object]]:
    return [{"key": k, "value": _otlp_value(v)} for k, v in (attrs or {}).items()]


def otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, object]:
    """An ExportTraceServiceRequest in OTLP's JSON encoding: spans grouped by resource and
    instrumentation scope; ids in hex, times in nanoseconds as strings, kinds and status
    codes as OTLP numbers them."""
    resources: dict[int, tuple[Resource, dict[str, list[dict[str, object]]]]] = {}
    for span in spans:
        ctx = span.get_span_context()
        if ctx is None:
            continue
        record: dict[str, object] = {
            "traceId": format(ctx.trace_id, "032x"),
            "spanId": format(ctx.span_id, "016x"),
            "name": span.name,
            "kind": span.kind.value + 1,  # OTLP: 0 is unspecified, INTERNAL is 1
            "startTimeUnixNano": str(span.start_time or 0),
            "endTimeUnixNano": str(span.end_time or 0),
            "attributes": _otlp_attributes(span.attributes),
            "status": {"code": span.status.status_code.value},
        }
        if span.parent is not None:
            record["parentSpanId"] = format(span.parent.span_id, "016x")
        scope = span.instrumentation_scope.name if span.instrumentation_scope else ""
        _, scopes = resources.setdefault(id(span.resource), (span.resource, {}))
        scopes.setdefault(scope, []).append(record)
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _otlp_attributes(resource.attributes)},
                "scopeSpans": [
                    {"scope": {"name": scope}, "spans": records}
                    for scope, records in scopes.items()
                ],
            }
            for resource, scopes in resources.values()
        ]
    }


def setup_tracing(service: str, trace_dir: str = "", otlp_endpoint: str = "") -> trace.Tracer:
    if not trace_dir and not otlp_endpoint:
        # Spans nobody collects cost ~30 µs a hop; the received traceparent still travels on.
        return trace.NoOpTracer()
    provider = TracerProvider(resource=Resource.create({"service.name": f"enclave-{service}"}))
    if trace_dir:
        exporter = JsonLinesExporter(Path(trace_dir) / f"{service}-{os.getpid()}.jsonl")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if otlp_endpoint:
        # Batched, on the processor's own thread: a slow collector never holds a request.
        provider.add_span_processor(BatchSpanProcessor(OtlpJsonExporter(otlp_endpoint)))
    trace.set_tracer_provider(provider)
    return trace.get_tracer(f"enclave.{service}")


def parent_context(ctx: RequestContext) -> Context:
    return propagate.extract({TRACEPARENT_HEADER: ctx.traceparent})


def with_span(ctx: RequestContext, span: trace.Span) -> RequestContext:
    """The request context handed to the next hop: same request, this span as parent."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    traceparent = carrier.get(TRACEPARENT_HEADER)
    return ctx.model_copy(update={"traceparent": traceparent}) if traceparent else ctx


def attributes(ctx: RequestContext, **extra: str) -> dict[str, str]:
    return {"enclave.tenant": ctx.tenant, "enclave.request_id": ctx.request_id, **extra}


def traced(
    tracer: trace.Tracer,
    name: str | Callable[[Req], str],
    handle: Callable[[Req], Awaitable[Rep]],
    kind: trace.SpanKind = trace.SpanKind.SERVER,
) -> Callable[[Req], Awaitable[Rep]]:
    """`handle` as one hop of its request's trace: a span named `name` (or `name(request)`),
    the child of the request's traceparent, which the handler's own requests then carry
    (`request.ctx` is replaced by `with_span`). Without tracing, `handle` itself."""
    if isinstance(tracer, trace.NoOpTracer):
        return handle

    async def hop(request: Req) -> Rep:
        ctx = request.ctx
        span_name = name if isinstance(name, str) else name(request)
        with tracer.start_as_current_span(
            span_name, context=parent_context(ctx), kind=kind, attributes=attributes(ctx)
        ) as span:
            request.ctx = with_span(ctx, span)
            return await handle(request)

    return hop
