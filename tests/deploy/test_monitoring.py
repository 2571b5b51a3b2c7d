"""deploy/monitoring: Prometheus accepts the rules and configs (promtool, Debian's
prometheus package), the alerts fire when they should (promtool's rule unit tests), and
every metric the rules, the dashboard and the chart's autoscalers query is one that
libs/metrics.py defines, while every metric it defines is on the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs import metrics
from tests.infra import REPO

MONITORING = REPO / "deploy" / "monitoring"
NAME = re.compile(r"\benclave_[a-z_]+\b")
# Series Prometheus makes itself, not the platform.
BUILTIN = {"up"}


def promtool(*args: str, cwd: Path = MONITORING) -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: run ENCLAVE_NEED_DEPLOY=1 deploy/local/bootstrap.sh")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def exprs_of_rules() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def exprs_of_dashboard() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def exprs_of_chart() -> list[str]:
    values = yaml.safe_load((REPO / "deploy" / "helm" / "enclave" / "values.yaml").read_text())
    stages: list[dict[str, Any]] = [*values["services"].values(), *values["workers"].values()]
    return [s["autoscaling"]["query"] for s in stages if "query" in s["autoscaling"]]


def test_rules_are_valid_and_fire_when_they_should() -> None:
    assert "SUCCESS: 11 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_prometheus_configs_are_valid(tmp_path: Path) -> None:
    promtool("check", "config", "prometheus-local.yml")
    # The compose one names its rules where the container mounts them.
    local = tmp_path / "prometheus.yml"
    text = (MONITORING / "prometheus-compose.yml").read_text()
    local.write_text(text.replace("/etc/prometheus/alerts.yml", str(MONITORING / "alerts.yml")))
    promtool("check", "config", str(local))


@pytest.mark.parametrize("source", ["rules", "dashboard", "chart"])
def test_every_queried_metric_is_defined(source: str) -> None:
    exprs = {"rules": exprs_of_rules, "dashboard": exprs_of_dashboard, "chart": exprs_of_chart}[
        source
    ]()
    assert exprs
    used = {name for expr in exprs for name in NAME.findall(expr)}
    unknown = used - metrics.metric_names() - BUILTIN
    assert not unknown, f"{source} queries metrics libs/metrics.py does not define: {unknown}"


def test_the_dashboard_shows_every_metric() -> None:
    used = {name for expr in exprs_of_dashboard() for name in NAME.findall(expr)}
    families = {
        re.sub(r"_(bucket|sum|count)$", "", n) if "_seconds_" in n else n
        for n in metrics.metric_names()
    }
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) if "_seconds_" in n else n for n in used}
    assert families <= shown, f"not on the dashboard: {families - shown}"
    # The signals by name.
    for wanted in (
        "enclave_time_to_first_token_seconds",
        "enclave_time_per_output_token_seconds",
        "enclave_tokens_total",
        "enclave_jetstream_consumer_lag",
        "enclave_busy_ratio",
        "enclave_queue_depth",
        "enclave_guardrail_verdicts_total",
        "enclave_audit_append_lag_seconds",
        "enclave_audit_outbox_size",
        "enclave_adapter_load_failures_total",
    ):
        assert wanted in shown


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", []):
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "service", "model", "tenant"} <= variables
    provisioning = yaml.safe_load(
        (MONITORING / "grafana-provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert provisioning["datasources"][0]["uid"] == "enclave-prometheus"
