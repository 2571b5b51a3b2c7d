"""libs/metrics.py: the port scheme for several replicas on one host, found by a real
Prometheus; /healthz and /readyz; the JetStream gauges read from a real NATS; what the
stage helpers record."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nats
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from libs import metrics
from libs.bus import ensure_streams, event_bytes
from libs.context import RequestContext
from libs.errors import ErrorInfo
from libs.events import ChatMessage, ChatRequested, RetrieveReply, RetrieveRequest
from libs.settings import Settings
from tests.deploy.test_helm import REQUIRED, prometheus_triggers, render, trigger_series
from tests.infra import REPO, Infra, Platform, chat, free_port, platform_env


def settings_for(services: Infra, home: Path, **extra: object) -> Settings:
    # A base port of our own: other test runs on this machine use the default blocks.
    base = random.randrange(20_000, 40_000, 500)
    values: dict[str, object] = {
        "home": home,
        "nats_url": services.nats_url,
        "bus_prefix": f"t{secrets.token_hex(4)}",
        "metrics_base_port": base,
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def servers() -> Iterator[list[metrics.MetricsServer]]:
    started: list[metrics.MetricsServer] = []
    yield started
    for server in started:
        server.close()


def get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def wait_until(check: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_replicas_on_one_host_take_their_stage_block_and_register(
    services: Infra, tmp_path: Path, servers: list[metrics.MetricsServer]
) -> None:
    settings = settings_for(services, tmp_path)
    folder = metrics.targets_dir(settings)
    folder.mkdir(parents=True)
    stale = folder / "guardrails-999999999-9460.json"  # a replica that died without cleaning up
    stale.write_text("[]")
    for _ in range(2):
        servers.append(metrics.MetricsServer(settings, "guardrails").start())
    servers.append(metrics.MetricsServer(settings, "worker", "smollm2").start())
    first = settings.metrics_base_port + metrics.PORT_BLOCKS["guardrails"][0]
    assert [s.port for s in servers[:2]] == [first, first + 1]
    assert servers[2].port == settings.metrics_base_port + metrics.PORT_BLOCKS["worker"][0]
    assert not stale.exists()
    found = sorted(json.loads(p.read_text())[0]["targets"][0] for p in folder.glob("*.json"))
    assert found == sorted(f"127.0.0.1:{s.port}" for s in servers)
    worker = json.loads(servers[2].target_file.read_text())[0]  # type: ignore[union-attr]
    assert worker["labels"]["stage"] == "worker-smollm2" and worker["labels"]["pool"] == "smollm2"
    for server in servers:
        body = get(server.port, "/metrics").text
        assert "enclave_service_info{" in body and "enclave_audit_outbox_size" in body
        assert get(server.port, "/healthz").status_code == 200
        assert get(server.port, "/nothing").status_code == 404
    servers[0].close()
    assert servers[0].target_file is not None and not servers[0].target_file.exists()


def test_a_full_block_falls_back_to_any_free_port(
    services: Infra, tmp_path: Path, servers: list[metrics.MetricsServer]
) -> None:
    settings = settings_for(services, tmp_path)
    ports = metrics.candidate_ports(settings, "audit")
    assert len(ports) == 21 and ports[-1] == 0
    fixed = settings_for(services, tmp_path, metrics_port=free_port())
    assert metrics.candidate_ports(fixed, "audit") == [fixed.metrics_port]
    server = metrics.MetricsServer(fixed, "audit").start()
    servers.append(server)
    assert server.port == fixed.metrics_port and server.target_file is None  # containers


def test_readyz_waits_for_the_bus_and_the_service_checks(
    services: Infra, tmp_path: Path, servers: list[metrics.MetricsServer]
) -> None:
    server = metrics.MetricsServer(settings_for(services, tmp_path), "memory").start()
    servers.append(server)
    assert wait_until(lambda: get(server.port, "/readyz").status_code == 200)
    loaded = False
    server.add_ready_check(lambda: loaded)
    assert get(server.port, "/readyz").status_code == 503
    loaded = True
    assert get(server.port, "/readyz").status_code == 200
    cut_off = settings_for(services, tmp_path, nats_url=f"nats://127.0.0.1:{free_port()}")
    lonely = metrics.MetricsServer(cut_off, "memory").start()
    servers.append(lonely)
    time.sleep(1.0)
    assert get(lonely.port, "/healthz").status_code == 200
    assert get(lonely.port, "/readyz").status_code == 503


async def test_jetstream_gauges_follow_the_consumer(services: Infra, tmp_path: Path) -> None:
    settings = settings_for(services, tmp_path)
    stream = settings.subjects.chat_stream_name
    nc = await nats.connect(services.nats_url)
    try:
        await ensure_streams(nc, settings)
        js = nc.jetstream()
        sub = await js.pull_subscribe(settings.subjects.chat_requested, "agent_runtime", stream)
        for i in range(5):
            await js.publish(settings.subjects.chat_requested, f"turn {i}".encode())
        labels = {"service": "agent_runtime", "stream": stream, "consumer": "agent_runtime"}
        await metrics.read_consumer(nc, "agent_runtime", stream, "agent_runtime")
        assert REGISTRY.get_sample_value("enclave_jetstream_consumer_pending", labels) == 5
        assert REGISTRY.get_sample_value("enclave_jetstream_consumer_lag", labels) == 5
        msgs = await sub.fetch(3, timeout=5)
        await msgs[0].ack_sync()
        await metrics.read_consumer(nc, "agent_runtime", stream, "agent_runtime")
        # Two delivered and not acked, two never delivered: four to go.
        assert REGISTRY.get_sample_value("enclave_jetstream_consumer_pending", labels) == 2
        assert REGISTRY.get_sample_value("enclave_jetstream_consumer_ack_pending", labels) == 2
        assert REGISTRY.get_sample_value("enclave_jetstream_consumer_lag", labels) == 4
        stream_labels = {"service": "agent_runtime", "stream": stream}
        assert REGISTRY.get_sample_value("enclave_jetstream_stream_messages", stream_labels) == 4
        for name in (
            stream,
            settings.subjects.memory_stream_name,
            settings.subjects.audit_stream_name,
        ):
            await js.delete_stream(name)
    finally:
        await nc.close()


def test_stage_helpers_record_what_the_dashboard_shows(tmp_path: Path) -> None:
    stage = metrics.StageMetrics("agent_runtime")
    before = REGISTRY.get_sample_value(
        "enclave_tokens_total",
        {"service": "agent_runtime", "tenant": "acme", "model": "m1", "direction": "out"},
    )
    stage.observe_generation(
        tenant="acme",
        model="m1",
        first_token_s=0.5,
        total_s=2.5,
        prompt_tokens=12,
        completion_tokens=5,
    )
    out = REGISTRY.get_sample_value(
        "enclave_tokens_total",
        {"service": "agent_runtime", "tenant": "acme", "model": "m1", "direction": "out"},
    )
    assert out == (before or 0) + 5
    tpot = REGISTRY.get_sample_value(
        "enclave_time_per_output_token_seconds_sum", {"service": "agent_runtime", "model": "m1"}
    )
    assert tpot is not None and tpot >= 0.5  # (2.5 - 0.5) / 4 tokens after the first
    with pytest.raises(RuntimeError), stage.request("chat.completions"):
        raise RuntimeError("boom")
    with stage.request("chat.completions") as outcome:
        outcome.code = 429
    errors = {
        code: REGISTRY.get_sample_value(
            "enclave_request_errors_total",
            {"service": "agent_runtime", "operation": "chat.completions", "code": code},
        )
        for code in ("500", "429", "200")
    }
    assert errors["500"] and errors["429"] and errors["200"] is None
    assert (
        REGISTRY.get_sample_value("enclave_requests_in_flight", {"service": "agent_runtime"}) == 0
    )

    work = metrics.StageMetrics("worker", "smollm2").work(capacity=2)
    for _ in range(3):
        work.accepted()
    work.started()
    labels = {"service": "worker", "pool": "smollm2"}
    assert REGISTRY.get_sample_value("enclave_busy_ratio", labels) == 0.5
    assert REGISTRY.get_sample_value("enclave_queue_depth", labels) == 2
    work.started()
    work.started()  # more running than slots: the ratio stops at 1
    assert REGISTRY.get_sample_value("enclave_busy_ratio", labels) == 1.0
    work.finished()
    work.finished()
    work.finished()
    assert REGISTRY.get_sample_value("enclave_busy_ratio", labels) == 0.0

    outbox = tmp_path / "outbox"
    outbox.mkdir()
    for i in range(3):
        (outbox / f"{i}.json").write_text("{}")
    (outbox / "partial.tmp").write_text("")
    (family,) = metrics.OutboxCollector(outbox, "memory").collect()
    assert family.samples[0].value == 3


async def test_a_metered_handler_counts_an_error_reply_by_its_status() -> None:
    stage = metrics.StageMetrics("memory")

    async def retrieve(request: RetrieveRequest) -> RetrieveReply:
        if request.query == "bad":
            return RetrieveReply(error=ErrorInfo(status=404, message="no such store"))
        return RetrieveReply()

    def count(code: str, name: str = "enclave_requests_total") -> float:
        labels = {"service": "memory", "operation": "memory.retrieve", "code": code}
        return REGISTRY.get_sample_value(name, labels) or 0

    before = count("200"), count("404"), count("404", "enclave_request_errors_total")
    handle = stage.handler("memory.retrieve", retrieve)
    ctx = RequestContext(tenant="acme", request_id="r1")
    assert (await handle(RetrieveRequest(ctx=ctx, user="u", query="ok"))).error is None
    reply = await handle(RetrieveRequest(ctx=ctx, user="u", query="bad"))
    assert reply.error is not None and reply.error.status == 404
    after = count("200"), count("404"), count("404", "enclave_request_errors_total")
    assert after == (before[0] + 1, before[1] + 1, before[2] + 1)


def start_prometheus(home: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A real Prometheus with deploy/monitoring/prometheus-local.yml's discovery, pointed
    at `home`'s targets, scraping every second."""
    if not shutil.which("prometheus"):
        pytest.fail("prometheus is missing: run ENCLAVE_NEED_DEPLOY=1 deploy/local/bootstrap.sh")
    local = (REPO / "deploy" / "monitoring" / "prometheus-local.yml").read_text()
    config = home / "prometheus.yml"
    config.write_text(
        local.replace("../../.enclave", str(home))
        .replace("rule_files: [alerts.yml]", "rule_files: []")
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("refresh_interval: 5s", "refresh_interval: 1s")
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def prom_query(port: int, query: str) -> list[dict[str, dict[str, str]]]:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5)
        result: list[dict[str, dict[str, str]]] = r.json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError):
        return []
    return result


REPLICA = (
    "import sys, time\n"
    "from libs.metrics import serve_metrics\n"
    "from libs.settings import load_settings\n"
    "serve_metrics(load_settings(), sys.argv[1], sys.argv[2] or None)\n"
    "time.sleep(300)\n"
)


def test_a_real_prometheus_finds_every_replica_on_one_host(services: Infra, tmp_path: Path) -> None:
    """Three replica processes of two stages, ports chosen at start: Prometheus scrapes
    them all through the file discovery, as deploy/monitoring/prometheus-local.yml does."""
    settings = settings_for(services, tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ENCLAVE_HOME": str(tmp_path),
        "ENCLAVE_NATS_URL": services.nats_url,
        "ENCLAVE_METRICS_BASE_PORT": str(settings.metrics_base_port),
    }
    replicas = [
        subprocess.Popen([sys.executable, "-c", REPLICA, service, pool], env=env, cwd=REPO)
        for service, pool in (("guardrails", ""), ("guardrails", ""), ("worker", "smollm2"))
    ]
    prometheus, port = start_prometheus(tmp_path)

    def scraped() -> list[dict[str, dict[str, str]]]:
        return prom_query(port, 'enclave_service_info{job="enclave"}')

    try:
        assert wait_until(lambda: len(scraped()) == 3, timeout=60), scraped()
        series = scraped()
        assert sorted(s["metric"]["stage"] for s in series) == [
            "guardrails",
            "guardrails",
            "worker-smollm2",
        ]
        assert len({s["metric"]["instance"] for s in series}) == 3  # three ports
        assert {s["metric"]["service"] for s in series} == {"guardrails", "worker"}
    finally:
        for proc in (prometheus, *replicas):
            proc.terminate()
        for proc in (prometheus, *replicas):
            proc.wait(timeout=30)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(get(port, "/metrics").text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def stage_ports(home: Path) -> dict[str, int]:
    ports: dict[str, int] = {}
    for path in (home / "metrics" / "targets").glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            target = json.loads(path.read_text())[0]
            ports[target["labels"]["stage"]] = int(target["targets"][0].rsplit(":", 1)[1])
    return ports


async def test_services_serve_metrics_and_report_a_stopped_stages_lag(
    services: Infra, tmp_path: Path
) -> None:
    """Real services started by `enclave serve`: each serves /metrics and /readyz on its
    own port; the chat consumer's lag rises while the runtime is stopped (reported by the
    worker, which keeps running) and falls once a runtime is back."""
    plat = Platform(
        env=platform_env(services, tmp_path, free_port()),
        home=tmp_path,
        base_url="",
    )
    settings = Settings(home=tmp_path, bus_prefix=plat.env["ENCLAVE_BUS_PREFIX"])
    stream = settings.subjects.chat_stream_name
    lag_key = (
        "enclave_jetstream_consumer_lag",
        frozenset({"service": "worker", "stream": stream, "consumer": "agent_runtime"}.items()),
    )
    try:
        plat.start("worker", "worker", "instant")
        plat.start("runtime", "agent_runtime")
        assert wait_until(lambda: {"worker-instant", "agent_runtime"} <= set(stage_ports(tmp_path)))
        ports = stage_ports(tmp_path)
        for stage in ("worker-instant", "agent_runtime"):
            assert wait_until(lambda s=stage: get(ports[s], "/readyz").status_code == 200), stage
            info = [k for k in scrape(ports[stage]) if k[0] == "enclave_service_info"]
            assert info, stage
        worker = ports["worker-instant"]
        assert wait_until(lambda: scrape(worker).get(lag_key) == 0, timeout=30)

        plat.stop("runtime")
        nc = await nats.connect(services.nats_url)
        try:
            js = nc.jetstream()
            for i in range(5):
                ctx = RequestContext(tenant="acme", request_id=f"req-lag-{i}")
                event = ChatRequested(
                    ctx=ctx,
                    model="enclave-instant",
                    messages=[ChatMessage(role="user", content="hello")],
                    reply_subject=settings.subjects.chat_stream("nobody", ctx.request_id),
                )
                await js.publish(settings.subjects.chat_requested, event_bytes(event))
        finally:
            await nc.close()
        assert wait_until(lambda: scrape(worker).get(lag_key) == 5, timeout=30)

        plat.start("runtime-back", "agent_runtime")
        assert wait_until(lambda: scrape(worker).get(lag_key) == 0, timeout=90), plat.logs()[-3000:]
    finally:
        plat.stop_all()


STAGES_UP = (
    "gateway",
    "agent_runtime",
    "inference_router",
    "worker:instant",
    "guardrails",
    "memory",
    "audit",
)


def test_after_enclave_up_prometheus_scrapes_every_stage(services: Infra, tmp_path: Path) -> None:
    """`enclave up` (the engines that need no model download of their own): every stage
    answers /metrics and /readyz on a port of its own, Prometheus with
    deploy/monitoring/prometheus-local.yml's discovery scrapes all of them, a query for
    time to first token by model returns the model of a chat just made, and Ctrl-C takes
    their targets away again."""
    gateway_port = free_port()
    env = platform_env(services, tmp_path, gateway_port)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", "--only", *STAGES_UP],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus, port = start_prometheus(tmp_path)
    wanted = {s.replace(":", "-") for s in STAGES_UP}

    def up_stages() -> set[str]:
        return {s["metric"]["stage"] for s in prom_query(port, 'up{job="enclave"} == 1')}

    try:
        ok = wait_until(lambda: up_stages() == wanted and up.poll() is None, timeout=240)
        assert ok, f"{up_stages()} of {wanted}\n{log.read_text()[-3000:]}"
        ports = stage_ports(tmp_path)
        assert set(ports) == wanted
        for stage, stage_port in ports.items():
            assert wait_until(lambda p=stage_port: get(p, "/readyz").status_code == 200), stage
            body = get(stage_port, "/metrics").text
            assert f'service="{stage.split("-")[0]}"' in body, stage

        # Time to first token by model: two chats, the second once Prometheus holds the
        # first, so that the histogram's rate has an increase to show.
        key = (tmp_path / "admin.key").read_text().strip()
        counted = 'enclave_time_to_first_token_seconds_count{model="enclave-instant"}'
        for _ in range(2):
            reply = chat(f"http://127.0.0.1:{gateway_port}", key, "enclave-instant")
            assert reply.status_code == 200, reply.text
            assert wait_until(lambda: prom_query(port, counted), timeout=60)
        ttft = (
            "histogram_quantile(0.5, sum by (model, le) "
            '(rate(enclave_time_to_first_token_seconds_bucket{job="enclave"}[5m])))'
        )

        def ttft_by_model() -> dict[str, float]:
            return {
                s["metric"].get("model", ""): float(s["value"][1])  # type: ignore[index]
                for s in prom_query(port, ttft)
            }

        def instant_has_ttft() -> bool:
            value = ttft_by_model().get("enclave-instant")
            return value is not None and value == value and value >= 0  # not NaN

        assert wait_until(instant_has_ttft, timeout=60), ttft_by_model()
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert not list((tmp_path / "metrics" / "targets").glob("*.json"))
    finally:
        for proc in (up, prometheus):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)


def sample_sum(port: int, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scrape(port).items() if n == name and wanted <= ls)


def test_chats_show_in_every_stages_metrics(services: Infra, tmp_path: Path) -> None:
    """Real services, each scraped on the port its discovery target names: two chats at
    once to a pool whose one engine thread takes 0.5 s a token. The worker reports itself
    busy with one chat queued while they run, and idle after; the runtime has time to first
    token for the model (at least the first token's 0.5 s) and tokens per tenant and model;
    guardrails the input verdicts; the gateway and the router the requests; audit the
    appended records."""
    registry = yaml.safe_load((REPO / "deploy" / "models.yaml").read_text())
    registry["pools"]["busy"] = {"engine": "instant", "tokens": 8, "delay_ms": 500}
    registry["models"].append({"id": "enclave-busy", "kind": "chat", "pool": "busy"})
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(registry))
    port = free_port()
    plat = Platform(
        env=platform_env(
            services, tmp_path, port, ENCLAVE_MODELS_FILE=str(tmp_path / "models.yaml")
        ),
        home=tmp_path,
        base_url=f"http://127.0.0.1:{port}",
    )
    model = "enclave-busy"
    try:
        plat.cli("migrate")
        plat.admin_key = plat.create_key("acme", "admin", rpm=1_000_000)
        plat.launch(["busy"], ["audit"], [model])
        ports = stage_ports(tmp_path)
        worker, runtime = ports["worker-busy"], ports["agent_runtime"]
        guardrails, gateway = ports["guardrails"], ports["gateway"]
        router, audit = ports["inference_router"], ports["audit"]
        ttft = "enclave_time_to_first_token_seconds_bucket"
        before = sample_sum(runtime, ttft, model=model, le="+Inf")

        seen: list[tuple[float, float]] = []
        with ThreadPoolExecutor(2) as pool:
            # max_tokens 4: 2 s a chat, the second waiting for the first's engine thread.
            replies = [pool.submit(chat, plat.base_url, plat.admin_key, model) for _ in range(2)]

            def busy_and_queued() -> bool:
                seen.append(
                    (
                        sample_sum(worker, "enclave_busy_ratio", pool="busy"),
                        sample_sum(worker, "enclave_queue_depth", pool="busy"),
                    )
                )
                return seen[-1] == (1.0, 1.0)

            assert wait_until(busy_and_queued, timeout=10), seen
            for reply in replies:
                assert reply.result().status_code == 200, reply.result().text
        idle = (
            sample_sum(worker, "enclave_busy_ratio", pool="busy"),
            sample_sum(worker, "enclave_queue_depth", pool="busy"),
        )
        assert idle == (0.0, 0.0)

        assert wait_until(lambda: sample_sum(runtime, ttft, model=model, le="+Inf") >= before + 2)
        # The first token comes after the engine's 0.5 s: none under 0.25 s.
        assert sample_sum(runtime, ttft, model=model, le="0.25") == 0
        tokens = "enclave_tokens_total"
        assert sample_sum(runtime, tokens, tenant="acme", model=model, direction="out") >= 8
        assert sample_sum(runtime, tokens, tenant="acme", model=model, direction="in") >= 2
        verdicts = sample_sum(
            guardrails, "enclave_guardrail_verdicts_total", direction="input", verdict="allowed"
        )
        assert verdicts >= 1
        requests = sample_sum(
            gateway, "enclave_requests_total", operation="chat.completions", code="200"
        )
        assert requests >= 3  # wait_model's and the two chats
        routed = sample_sum(gateway, "enclave_requests_total", operation="GET /readyz")
        assert routed >= 1
        # The runtime asks the router for the model's route (then caches it).
        routes = sample_sum(
            router, "enclave_requests_total", operation="inference.route", code="200"
        )
        assert routes >= 1
        # The turns' audit records reach the chain: appended, with their lag.
        appended = "enclave_audit_appended_total"
        assert wait_until(lambda: sample_sum(audit, appended) >= 3, timeout=30)
        assert sample_sum(audit, "enclave_audit_append_lag_seconds_count") >= 3

        # Every KEDA Prometheus trigger of these stages (deploy/helm) reads series that
        # their replicas really export (the worker's for this platform's pool).
        queries = prometheus_triggers(render(REQUIRED))
        for stage, stage_port in (
            ("gateway", gateway),
            ("inference-router", router),
            ("guardrails", guardrails),
            ("worker-smollm2", worker),
        ):
            exported = scrape(stage_port)
            for name, labels in trigger_series(queries[stage]):
                wanted = {**labels, "pool": "busy"} if "pool" in labels else labels
                found = [ls for n, ls in exported if n == name and set(wanted.items()) <= ls]
                assert found, (stage, name, wanted)
    finally:
        plat.stop_all()
