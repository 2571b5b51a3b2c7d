"""The platform's Prometheus metrics: every name in one place, and each process's /metrics.

Every metric carries the stage that reports it (`service`) among its labels, so that the
same queries work however Prometheus found the process (Kubernetes pods, compose DNS, the
file discovery below). deploy/monitoring's alert rules and Grafana dashboard use only the
names defined here (tests/deploy/test_monitoring.py checks that).

The port scheme (`serve_metrics`): each process serves /metrics, /healthz and /readyz on
one HTTP port of its own.
- In a container or a pod (each replica its own network namespace) the port is fixed:
  ENCLAVE_METRICS_PORT=9400 and ENCLAVE_METRICS_HOST=0.0.0.0.
- On one host with several replicas of a stage (`enclave up`, or `enclave serve` run by
  hand), ENCLAVE_METRICS_PORT=0 (the default): each stage owns a block of ports from
  ENCLAVE_METRICS_BASE_PORT (9400): gateway 9400-9419, agent_runtime 9420-9439,
  inference_router 9440-9459, guardrails 9460-9479, memory 9480-9499, audit 9500-9519,
  sandbox 9520-9539, workers of every pool 9600-9699. A replica takes the first free
  port of its block (binding is the lock, so two replicas never race to one port), or any
  free port once the block is full. It then writes a Prometheus file-discovery target,
  `<ENCLAVE_HOME>/metrics/targets/<stage>-<pid>-<port>.json`, removed when it exits (and by the
  next replica once its pid is gone): Prometheus reads `targets/*.json`
  (deploy/monitoring/prometheus-local.yml) and finds every replica whatever its port.
- ENCLAVE_METRICS_PORT=-1: no endpoint at all.

/healthz answers 200 while the process runs. /readyz answers 200 once the process's
monitor connection reaches NATS (no stage serves anything without the bus) and every
readiness check added (`MetricsServer.add_ready_check`) passes: `enclave serve` adds that
the service is built and started (its models loaded, its subscriptions made).

The monitor thread also reads, every few seconds, every JetStream consumer of the
platform (`CONSUMED`: pending, waiting for an ack, lag), whichever stage it runs in: the
lag of a stage shows most when that stage is down, so the other stages report it
(`max by (stream, consumer)` in the queries). The audit outbox's size on disk is counted
at each scrape. Neither needs code in the services.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import nats
from nats.aio.client import Client as NatsClient
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from libs.audit import outbox_dir
from libs.settings import Settings

log = logging.getLogger("enclave.metrics")
Req = TypeVar("Req")
Rep = TypeVar("Rep")

# -- the port scheme --
PORT_BLOCKS: dict[str, tuple[int, int]] = {
    # stage: (offset from the base port, how many ports)
    "gateway": (0, 20),
    "agent_runtime": (20, 20),
    "inference_router": (40, 20),
    "guardrails": (60, 20),
    "memory": (80, 20),
    "audit": (100, 20),
    "sandbox": (120, 20),
    "worker": (200, 100),
}
# The JetStream consumer each stage consumes: (its stream's name in `Subjects`, durable).
CONSUMED: dict[str, tuple[str, str]] = {
    "agent_runtime": ("chat_stream_name", "agent_runtime"),
    "memory": ("memory_stream_name", "memory"),
    "audit": ("audit_stream_name", "audit"),
}
MONITOR_INTERVAL_S = 5.0

# -- the metrics --
# Latency buckets: from sub-millisecond hops to minutes-long generations.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1)

SERVICE_INFO = Gauge(
    "enclave_service_info",
    "One per running process: its stage, pool and replica",
    ["service", "pool", "replica"],
)
REQUESTS = Counter(
    "enclave_requests", "Requests handled, by outcome code", ["service", "operation", "code"]
)
REQUEST_ERRORS = Counter(
    "enclave_request_errors",
    "Requests that ended in an error (code >= 400 or an error reply)",
    ["service", "operation", "code"],
)
REQUEST_DURATION = Histogram(
    "enclave_request_duration_seconds",
    "Time from a request's arrival to its last byte",
    ["service", "operation"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("enclave_requests_in_flight", "Requests being handled now", ["service"])


def _per_model(name: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
    """A histogram of generations, by stage and model."""
    return Histogram(name, doc, ["service", "model"], buckets=buckets)


TIME_TO_FIRST_TOKEN = _per_model(
    "enclave_time_to_first_token_seconds", "Time from a generation's request to its first token"
)
TIME_PER_OUTPUT_TOKEN = _per_model(
    "enclave_time_per_output_token_seconds",
    "Mean time between output tokens of one generation, after the first",
    TOKEN_BUCKETS,
)
GENERATION_DURATION = _per_model(
    "enclave_generation_duration_seconds", "Time from a generation's request to its last token"
)
TOKENS = Counter(
    "enclave_tokens",
    "Tokens in (prompt) and out (completion) per tenant and model",
    ["service", "tenant", "model", "direction"],
)
JETSTREAM_PENDING = Gauge(
    "enclave_jetstream_consumer_pending",
    "Messages of the stream not yet delivered to the consumer",
    ["service", "stream", "consumer"],
)
JETSTREAM_ACK_PENDING = Gauge(
    "enclave_jetstream_consumer_ack_pending",
    "Messages delivered to the consumer and not yet acknowledged",
    ["service", "stream", "consumer"],
)
JETSTREAM_LAG = Gauge(
    "enclave_jetstream_consumer_lag",
    "Messages the consumer has not finished: pending plus waiting for an ack",
    ["service", "stream", "consumer"],
)
JETSTREAM_MESSAGES = Gauge(
    "enclave_jetstream_stream_messages", "Messages stored in the stream", ["service", "stream"]
)
BUSY_RATIO = Gauge(
    "enclave_busy_ratio",
    "Share of a replica's capacity in use now (running / slots)",
    ["service", "pool"],
)
QUEUE_DEPTH = Gauge(
    "enclave_queue_depth",
    "Work a replica accepted and has not started (waiting for a free slot)",
    ["service", "pool"],
)
GUARDRAIL_VERDICTS = Counter(
    "enclave_guardrail_verdicts",
    "Guardrail verdicts by direction, outcome and the rule that decided",
    ["service", "direction", "verdict", "rule"],
)
AUDIT_APPEND_LAG = Histogram(
    "enclave_audit_append_lag_seconds",
    "Time from an audit event's own timestamp to its append to the chain",
    ["service"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
AUDIT_APPENDED = Counter("enclave_audit_appended", "Audit events appended to a chain", ["service"])
ADAPTER_LOADS = Counter(
    "enclave_adapter_loads", "LoRA adapters loaded by a worker", ["service", "pool", "adapter"]
)
ADAPTER_LOAD_FAILURES = Counter(
    "enclave_adapter_load_failures",
    "LoRA adapters a worker failed to load",
    ["service", "pool", "adapter"],
)

ALL_METRICS = (
    SERVICE_INFO,
    REQUESTS,
    REQUEST_ERRORS,
    REQUEST_DURATION,
    IN_FLIGHT,
    TIME_TO_FIRST_TOKEN,
    TIME_PER_OUTPUT_TOKEN,
    GENERATION_DURATION,
    TOKENS,
    JETSTREAM_PENDING,
    JETSTREAM_ACK_PENDING,
    JETSTREAM_LAG,
    JETSTREAM_MESSAGES,
    BUSY_RATIO,
    QUEUE_DEPTH,
    GUARDRAIL_VERDICTS,
    AUDIT_APPEND_LAG,
    AUDIT_APPENDED,
    ADAPTER_LOADS,
    ADAPTER_LOAD_FAILURES,
)
OUTBOX_SIZE = "enclave_audit_outbox_size"


def metric_names() -> set[str]:
    """Every series name this module exposes (histograms with their _bucket/_sum/_count)."""
    names = {OUTBOX_SIZE}
    for metric in ALL_METRICS:
        for family in metric.describe():
            base = family.name
            if family.type == "counter":
                names.add(f"{base}_total")
            elif family.type == "histogram":
                names.update({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
            else:
                names.add(base)
    return names


# -- what services call --


@dataclass
class StageMetrics:
    """The metrics of one stage, with its labels bound: what a service's code calls."""

    service: str
    pool: str = ""

    @contextlib.contextmanager
    def request(self, operation: str) -> Iterator[RequestOutcome]:
        """Count and time one request; set `.code` on the yielded outcome (200 by default)."""
        outcome = RequestOutcome()
        IN_FLIGHT.labels(self.service).inc()
        started = time.perf_counter()
        try:
            yield outcome
        except BaseException:
            outcome.code = 500
            raise
        finally:
            IN_FLIGHT.labels(self.service).dec()
            self.observe_request(operation, outcome.code, time.perf_counter() - started)

    def handler(
        self, operation: str, handle: Callable[[Req], Awaitable[Rep]]
    ) -> Callable[[Req], Awaitable[Rep]]:
        """A bus handler counted and timed as `operation`; a reply carrying an `error`
        (libs.errors.ErrorInfo) counts as its status."""

        async def metered(request: Req) -> Rep:
            with self.request(operation) as outcome:
                reply = await handle(request)
                error = getattr(reply, "error", None)
                if error is not None:
                    outcome.code = getattr(error, "status", 500)
                return reply

        return metered

    def observe_request(self, operation: str, code: int | str, seconds: float) -> None:
        code_text = str(code)
        REQUESTS.labels(self.service, operation, code_text).inc()
        if not code_text.isdigit() or int(code_text) >= 400:
            REQUEST_ERRORS.labels(self.service, operation, code_text).inc()
        REQUEST_DURATION.labels(self.service, operation).observe(seconds)

    def observe_generation(
        self,
        *,
        tenant: str,
        model: str,
        first_token_s: float | None,
        total_s: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """One finished generation: time to first token, time per output token, total,
        tokens in and out."""
        if first_token_s is not None:
            TIME_TO_FIRST_TOKEN.labels(self.service, model).observe(first_token_s)
            if completion_tokens > 1:
                per_token = (total_s - first_token_s) / (completion_tokens - 1)
                TIME_PER_OUTPUT_TOKEN.labels(self.service, model).observe(max(0.0, per_token))
        GENERATION_DURATION.labels(self.service, model).observe(total_s)
        TOKENS.labels(self.service, tenant, model, "in").inc(prompt_tokens)
        TOKENS.labels(self.service, tenant, model, "out").inc(completion_tokens)

    def guardrail_verdict(self, direction: str, allowed: bool, rule: str | None) -> None:
        verdict = "allowed" if allowed else "blocked"
        GUARDRAIL_VERDICTS.labels(self.service, direction, verdict, rule or "none").inc()

    def audit_appended(self, event_times: list[float]) -> None:
        """Events just appended, by their own timestamps (epoch seconds)."""
        now = time.time()
        for at in event_times:
            AUDIT_APPEND_LAG.labels(self.service).observe(max(0.0, now - at))
        AUDIT_APPENDED.labels(self.service).inc(len(event_times))

    def adapter_load(self, adapter: str, ok: bool) -> None:
        (ADAPTER_LOADS if ok else ADAPTER_LOAD_FAILURES).labels(
            self.service, self.pool, adapter
        ).inc()

    def work(self, capacity: int) -> WorkTracker:
        return WorkTracker(self, capacity)

    def sample_work(self, busy_ratio: Callable[[], float], queued: Callable[[], float]) -> None:
        """Busy ratio and queue depth read from the stage's own scheduler at each scrape
        (nothing on the request path)."""
        BUSY_RATIO.labels(self.service, self.pool).set_function(busy_ratio)
        QUEUE_DEPTH.labels(self.service, self.pool).set_function(queued)


@dataclass
class RequestOutcome:
    code: int | str = 200


@dataclass
class WorkTracker:
    """Busy ratio and queue depth of a replica with `capacity` slots (a worker's engine
    threads): accepted work waits in the queue until a slot starts it."""

    stage: StageMetrics
    capacity: int
    queued: int = 0
    running: int = 0

    def __post_init__(self) -> None:
        self.capacity = max(1, self.capacity)
        self._publish()

    def accepted(self) -> None:
        self.queued += 1
        self._publish()

    def started(self) -> None:
        self.queued = max(0, self.queued - 1)
        self.running += 1
        self._publish()

    def finished(self) -> None:
        self.running = max(0, self.running - 1)
        self._publish()

    @property
    def busy_ratio(self) -> float:
        return min(self.running, self.capacity) / self.capacity

    def _publish(self) -> None:
        BUSY_RATIO.labels(self.stage.service, self.stage.pool).set(self.busy_ratio)
        QUEUE_DEPTH.labels(self.stage.service, self.stage.pool).set(self.queued)


# -- the endpoint --


class OutboxCollector(Collector):
    """The audit outbox's size on disk, counted when Prometheus scrapes."""

    def __init__(self, outbox: Path, service: str) -> None:
        self.outbox = outbox
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            size = sum(1 for p in self.outbox.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            size = 0
        family = GaugeMetricFamily(
            OUTBOX_SIZE, "Audit events waiting on disk for the bus", labels=["service"]
        )
        family.add_metric([self.service], size)
        yield family


@dataclass
class MetricsServer:
    """One process's /metrics, /healthz and /readyz, and its monitor thread."""

    settings: Settings
    service: str
    pool: str = ""
    registry: CollectorRegistry = REGISTRY
    port: int = 0
    target_file: Path | None = None
    checks: list[Callable[[], bool]] = field(default_factory=list)
    bus_connected: bool = False
    _http: ThreadingHTTPServer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return f"worker-{self.pool}" if self.pool else self.service

    def ready(self) -> bool:
        return self.bus_connected and all(check() for check in self.checks)

    def add_ready_check(self, check: Callable[[], bool]) -> None:
        """/readyz also waits for `check()` (e.g. a model loaded, a consumer subscribed)."""
        self.checks.append(check)

    def start(self) -> MetricsServer:
        self._http = bind(self.settings, self.service, self._handler())
        self.port = self._http.server_address[1]
        SERVICE_INFO.labels(self.service, self.pool, replica_id()).set(1)
        with contextlib.suppress(ValueError):  # one per process: a second server shares it
            self.registry.register(OutboxCollector(outbox_dir(self.settings.home), self.stage))
        self._spawn(self._http.serve_forever, "metrics-http")
        self._spawn(self._monitor, "metrics-monitor")
        if self.settings.metrics_port == 0:
            self.target_file = write_target(self.settings, self.stage, self.port, self.pool)
        log.info("%s serves /metrics on port %d", self.stage, self.port)
        return self

    def close(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=1.0)  # daemon threads: a connect in progress ends with us
        if self.target_file is not None:
            self.target_file.unlink(missing_ok=True)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b'{"status":"ok"}', "application/json")
                elif path == "/readyz":
                    ok = server.ready()
                    body = b'{"status":"ready"}' if ok else b'{"status":"not ready"}'
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b'{"error":"not found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a scrape every few seconds is no news

        return Handler

    def _monitor(self) -> None:
        asyncio.run(self._watch())

    async def _pause(self, seconds: float) -> None:
        """Sleep on this thread's own loop, waking early on stop. (Waiting on the event in the
        default executor failed at interpreter shutdown: no new futures may be scheduled then.)"""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def _watch(self) -> None:
        """Keep a connection to NATS (readiness) and read the stage's JetStream consumer."""
        subjects = self.settings.subjects
        consumers = [(getattr(subjects, attr), durable) for attr, durable in CONSUMED.values()]
        nc: NatsClient | None = None

        async def quiet(_: Exception) -> None:
            pass  # the bus being away shows as /readyz 503, not as a log line a second

        while not self._stop.is_set():
            try:
                if nc is None or nc.is_closed:
                    nc = await nats.connect(
                        self.settings.nats_url,
                        name=f"enclave-{self.stage}-metrics",
                        inbox_prefix=self.settings.nats_inbox_prefix,
                        error_cb=quiet,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=1,
                        connect_timeout=2,
                    )
            except Exception as exc:
                log.debug("metrics monitor cannot reach NATS: %s", exc)
                nc = None
            self.bus_connected = nc is not None and nc.is_connected
            for stream, durable in consumers if nc is not None and nc.is_connected else []:
                try:
                    await read_consumer(nc, self.service, stream, durable)  # type: ignore[arg-type]
                except Exception as exc:  # not created yet: the stage itself creates it
                    log.debug("metrics monitor: %s", exc)
            await self._pause(MONITOR_INTERVAL_S)
        if nc is not None and not nc.is_closed:
            await nc.close()


async def read_consumer(nc: NatsClient, service: str, stream: str, durable: str) -> None:
    """Set the JetStream gauges of one consumer from the server's own numbers."""
    js = nc.jetstream()
    info = await js.consumer_info(stream, durable)
    stream_info = await js.stream_info(stream)
    pending, ack_pending = info.num_pending or 0, info.num_ack_pending or 0
    JETSTREAM_PENDING.labels(service, stream, durable).set(pending)
    JETSTREAM_ACK_PENDING.labels(service, stream, durable).set(ack_pending)
    JETSTREAM_LAG.labels(service, stream, durable).set(pending + ack_pending)
    JETSTREAM_MESSAGES.labels(service, stream).set(stream_info.state.messages)


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def candidate_ports(settings: Settings, service: str) -> list[int]:
    """Where a replica of `service` may listen, in order (the port scheme above)."""
    if settings.metrics_port > 0:
        return [settings.metrics_port]
    offset, size = PORT_BLOCKS.get(service, PORT_BLOCKS["worker"])
    first = settings.metrics_base_port + offset
    return [*range(first, first + size), 0]  # 0: any free port once the block is full


def bind(
    settings: Settings, service: str, handler: type[BaseHTTPRequestHandler]
) -> ThreadingHTTPServer:
    last: OSError | None = None
    for port in candidate_ports(settings, service):
        try:
            server = ThreadingHTTPServer((settings.metrics_host, port), handler)
        except OSError as exc:
            last = exc
            continue
        server.daemon_threads = True
        return server
    raise OSError(f"no port to serve /metrics of {service} on: {last}")


def targets_dir(settings: Settings) -> Path:
    return settings.home / "metrics" / "targets"


def write_target(settings: Settings, stage: str, port: int, pool: str) -> Path:
    """A Prometheus file-discovery target for this process; stale ones are removed."""
    folder = targets_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        pid = old.stem.rsplit("-", 2)[-2] if old.stem.count("-") >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            old.unlink(missing_ok=True)
    host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "") else settings.metrics_host
    labels = {"stage": stage, "replica": replica_id()}
    if pool:
        labels["pool"] = pool
    path = folder / f"{stage}-{os.getpid()}-{port}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": [f"{host}:{port}"], "labels": labels}]))
    tmp.replace(path)  # Prometheus never reads half a file
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve_metrics(
    settings: Settings, service: str, pool: str | None = None
) -> MetricsServer | None:
    """Start this process's /metrics, /healthz and /readyz (None with ENCLAVE_METRICS_PORT=-1)."""
    if settings.metrics_port < 0:
        return None
    server = MetricsServer(settings, service, pool or "").start()
    atexit.register(server.close)
    _close_on_sigterm(server)
    return server


def _close_on_sigterm(server: MetricsServer) -> None:
    """Take the target away on SIGTERM too: uvicorn re-raises the signal once it has shut
    down, and the default handler would end the process before `atexit` runs. A server
    that installs its own handler (FastStream) replaces this one and exits normally."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return

    def handler(signum: int, _frame: object) -> None:
        server.close()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)
