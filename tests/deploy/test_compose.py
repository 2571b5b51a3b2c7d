"""deploy/compose: `docker-compose config` accepts the file (no engine needed) and what it
resolves to is the platform: every stage with replicas, TLS at Caddy, vLLM on a GPU."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import REPO

COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "NATS_PASSWORD": "nats-secret"}
STAGES = {
    "gateway",
    "agent_runtime",
    "inference_router",
    "guardrails",
    "memory",
    "audit",
    "sandbox",
}
ENGINES = {"nats", "postgres", "redis", "qdrant", "caddy"}


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        # deploy/local/bootstrap.sh installs it (Debian's package) with ENCLAVE_NEED_DEPLOY=1.
        pytest.fail(f"{name} is missing: run ENCLAVE_NEED_DEPLOY=1 deploy/local/bootstrap.sh")
    return path


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **(env or {})},
        cwd=COMPOSE_DIR,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The file as docker-compose resolves it, every profile on."""
    profiles = ["--profile", "gpu", "--profile", "sandbox", "--profile", "monitoring"]
    done = compose(*profiles, "config", env=SECRETS)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_config_refuses_to_run_without_the_secrets() -> None:
    done = compose("config", env={})
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr or "NATS_PASSWORD" in done.stderr


def test_every_stage_runs_with_replicas(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) >= ENGINES
    assert set(services) >= STAGES
    pools = {name.removeprefix("worker-") for name in services if name.startswith("worker-")}
    registry = yaml.safe_load((REPO / "deploy" / "models.yaml").read_text())
    assert set(registry["pools"]) <= pools, "a pool of deploy/models.yaml has no worker"
    for name in STAGES - {"sandbox"}:
        assert services[name]["deploy"]["replicas"] >= 2, name
    assert services["worker-smollm2"]["deploy"]["replicas"] >= 2
    # The schema and the audit keys are made once, before any replica races to.
    assert services["migrate"]["command"][-1] == "enclave migrate && enclave audit keys"
    assert services["audit"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    for name, svc in services.items():
        if name in STAGES or name.startswith("worker-"):
            assert svc["command"][:2] == ["enclave", "serve"], name
            env = svc["environment"]
            assert env["ENCLAVE_NATS_URL"] == "nats://enclave:nats-secret@nats:4222", name
            assert env["ENCLAVE_QDRANT_URL"] == "http://qdrant:6333", name
            assert "pg-secret@postgres:5432" in env["ENCLAVE_DATABASE_URL"], name


def test_only_caddy_is_reachable_from_outside(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    published = {
        name
        for name, svc in services.items()
        for port in svc.get("ports", [])
        # docker-compose 1.29 writes `127.0.0.1:3000:3000/tcp` for a loopback-only port.
        if not (isinstance(port, str) and port.startswith("127.0.0.1:"))
    }
    assert published == {"caddy"}
    assert {str(p["target"]) for p in services["caddy"]["ports"]} == {"443", "80"}
    assert resolved["networks"]["backend"]["internal"] is True
    # The gateway is the one stage on the edge network, where Caddy reaches it.
    on_edge = {name for name, svc in services.items() if "edge" in svc.get("networks", {})}
    assert on_edge == {"caddy", "gateway"}
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000/tcp"]


def test_vllm_worker_reserves_a_gpu_in_its_own_profile(resolved: dict[str, Any]) -> None:
    vllm = resolved["services"]["worker-vllm"]
    assert vllm["profiles"] == ["gpu"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert vllm["build"]["target"] == "vllm"
    # The GPU image's registry has the pool it serves.
    assert "/etc/enclave/models.yaml" in " ".join(vllm["volumes"])


def test_mounted_files_exist_and_are_valid(resolved: dict[str, Any]) -> None:
    for name, svc in resolved["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]  # docker-compose 1.29 writes `source:target:mode`
            if source.startswith("/") and not source.endswith("/models"):
                assert Path(source).exists(), f"{name}: {source}"
    # Caddy's own parser, and nats-server's config test.
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "ENCLAVE_DOMAIN": "enclave.example"}
    done = subprocess.run(
        [tool("caddy"), "adapt", "--config", str(COMPOSE_DIR / "Caddyfile"), "--validate"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    adapted = yaml.safe_load(done.stdout)  # JSON is YAML
    route = adapted["apps"]["http"]["servers"]["srv0"]["routes"][0]
    assert "enclave.example" in str(route["match"]) and "gateway:8000" in str(route)
    conf = REPO / "deploy" / "nats" / "nats-single.conf"
    done = subprocess.run(
        [tool("nats-server"), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "NATS_PASSWORD": "x"},
    )
    assert done.returncode == 0, done.stderr


def test_gpu_registry_is_the_default_one_plus_vllm() -> None:
    base = yaml.safe_load((REPO / "deploy" / "models.yaml").read_text())
    gpu = yaml.safe_load((COMPOSE_DIR / "models.gpu.yaml").read_text())
    assert {k: v for k, v in gpu["pools"].items() if k != "vllm"} == base["pools"]
    assert gpu["pools"]["vllm"]["engine"] == "vllm"
    assert [m for m in gpu["models"] if m["pool"] != "vllm"] == base["models"]


def test_the_dockerfile_builds_from_files_that_exist(resolved: dict[str, Any]) -> None:
    """No engine here to build it: its stages and the files it copies are checked instead."""
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE))
    assert {"base", "llama", "platform", "vllm"} <= stages
    for svc in resolved["services"].values():
        if "build" in svc:
            assert svc["build"].get("target", "platform") in stages
            assert Path(svc["build"]["context"]) == REPO
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE)
    sources = {src for line in copied for src in line.split()}
    assert {"libs", "services", "pyproject.toml", "deploy/models.yaml"} <= sources
    for src in sources:
        assert (REPO / src).exists(), src
    # The image installs what pyproject.toml pins, and runs as a user, not root.
    assert "torch==2.13.0" in dockerfile and "USER enclave" in dockerfile
