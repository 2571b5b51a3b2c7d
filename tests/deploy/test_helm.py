"""deploy/helm: the chart renders (Helm's own engine, from PyPI's helm-python-sdk), every
object validates against the Kubernetes schemas (kubernetes-validate, offline) and KEDA's
ScaledObject CRD, and the objects say what the platform needs: probes, GPUs, secrets,
disruption budgets, network isolation and autoscaling per stage."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from libs.bus import stream_configs
from libs.metrics import metric_names
from libs.settings import Settings
from tests.infra import REPO

CHART = REPO / "deploy" / "helm" / "enclave"
KEDA_CRD = Path(__file__).parent / "schemas" / "keda.sh_scaledobjects.yaml"
KUBERNETES_VERSION = "1.30"
REQUIRED = {
    "nats": {"password": "s3cret/with:odd@chars"},
    "postgres": {"url": "postgresql+asyncpg://enclave:pw@pg.databases:5432/enclave"},
    "auditKeys": {"existingSecret": "enclave-audit-keys"},
}
# The stages that consume a JetStream consumer, and which (stream, durable consumer).
JETSTREAM_STAGES = {
    "agent-runtime": ("ENCLAVE_CHAT", "agent_runtime"),
    "memory": ("ENCLAVE_MEMORY", "memory"),
    "audit": ("ENCLAVE_AUDIT", "audit"),
}


# The `service` label the replicas of each queue-group stage report (StageMetrics).
STAGE_SERVICE = {
    "gateway": "gateway",
    "inference-router": "inference_router",
    "guardrails": "guardrails",
    "sandbox": "sandbox",
}
SELECTOR = re.compile(r"(enclave_\w+)\{([^}]*)\}")


def trigger_series(query: str) -> list[tuple[str, dict[str, str]]]:
    """Each `enclave_*{labels}` series a Prometheus trigger's query reads."""
    return [
        (name, dict(re.findall(r'(\w+)="([^"]*)"', labels)))
        for name, labels in SELECTOR.findall(query)
    ]


def prometheus_triggers(objects: list[dict[str, Any]]) -> dict[str, str]:
    """stage -> its Prometheus trigger's query."""
    return {
        name.removeprefix("ent-"): trigger["metadata"]["query"]
        for name, obj in of_kind(objects, "ScaledObject").items()
        for trigger in obj["spec"]["triggers"]
        if trigger["type"] == "prometheus"
    }


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="ent", namespace="enclave", is_install=True)
    objects: list[dict[str, Any]] = []
    for text in manifests.values():
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render(REQUIRED)


def test_every_object_is_valid_kubernetes(objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "PodDisruptionBudget", "NetworkPolicy", "Secret", "ScaledObject"} <= kinds
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            continue
        # strict: an unknown field anywhere is an error too.
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_scaled_objects_are_valid_keda(objects: list[dict[str, Any]]) -> None:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = version["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(schema)
    scaled = of_kind(objects, "ScaledObject")
    assert scaled
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        errors = [e.message for e in validator.iter_errors(obj)]
        assert not errors, f"{name}: {errors}"
    # The schema bites: a trigger without its type is refused.
    broken = yaml.safe_load(yaml.safe_dump(next(iter(scaled.values()))))
    del broken["spec"]["triggers"][0]["type"]
    assert list(validator.iter_errors(broken))


def test_each_stage_scales_on_its_own_signal(objects: list[dict[str, Any]]) -> None:
    deployments = of_kind(objects, "Deployment")
    scaled = of_kind(objects, "ScaledObject")
    assert set(scaled) == set(deployments), "every Deployment has its ScaledObject"
    streams = {c.name for c in stream_configs(Settings())}
    for name, obj in scaled.items():
        stage = name.removeprefix("ent-")
        assert obj["spec"]["scaleTargetRef"]["name"] == name
        assert obj["spec"]["minReplicaCount"] >= 1
        (trigger,) = obj["spec"]["triggers"]
        meta = trigger["metadata"]
        if stage in JETSTREAM_STAGES:
            assert trigger["type"] == "nats-jetstream", stage
            assert (meta["stream"], meta["consumer"]) == JETSTREAM_STAGES[stage]
            assert meta["stream"] in streams
            assert meta["natsServerMonitoringEndpoint"].endswith(":8222")
            assert int(meta["lagThreshold"]) > 0
        else:
            # A queue group: no consumer lag to read, so what its replicas report.
            assert trigger["type"] == "prometheus", stage
            assert meta["query"].count("enclave_") >= 1 and float(meta["threshold"]) > 0
            assert meta["serverAddress"].startswith("http")


def test_every_prometheus_trigger_reads_what_its_stage_exports() -> None:
    """A query names metrics libs/metrics.py defines, selected by the stage's own service
    (and pool), a counter only through rate(), and sums over the replicas (KEDA divides by
    the threshold: AverageValue). That each stage really exports its series is checked on
    running replicas: test_metrics.py::test_chats_show_in_every_stages_metrics (gateway,
    router, guardrails, a worker pool) and tests/sandbox/test_service.py (the sandbox)."""
    objects = render(merged(REQUIRED, {"services": {"sandbox": {"enabled": True}}}))
    queries = prometheus_triggers(objects)
    assert set(queries) >= {*STAGE_SERVICE, "worker-smollm2", "worker-vllm"}
    defined = metric_names()
    for stage, query in queries.items():
        series = trigger_series(query)
        assert series, stage
        assert query.startswith("sum("), stage
        for name, labels in series:
            assert name in defined, (stage, name)
            if stage.startswith("worker-"):
                assert labels == {"service": "worker", "pool": stage.removeprefix("worker-")}
            else:
                assert labels == {"service": STAGE_SERVICE[stage]}, stage
            if name.endswith("_total"):
                assert f"rate({name}{{" in query, (stage, "a counter only through rate()")
    # The router has no slots: it scales on its request rate, not on a busy ratio.
    assert trigger_series(queries["inference-router"]) == [
        ("enclave_requests_total", {"service": "inference_router"})
    ]


def test_deployments_have_probes_resources_and_the_secret(objects: list[dict[str, Any]]) -> None:
    deployments = of_kind(objects, "Deployment")
    stages = {n.removeprefix("ent-") for n in deployments}
    assert stages >= {"gateway", "agent-runtime", "inference-router", "guardrails", "memory"}
    assert stages >= {"audit", "worker-smollm2", "worker-minilm", "worker-vllm"}
    secret = of_kind(objects, "Secret")["ent-enclave"]
    url = secret["stringData"]["ENCLAVE_NATS_URL"]
    assert url.startswith("nats://enclave:s3cret%2Fwith%3Aodd%40chars@nats.")
    for name, obj in deployments.items():
        pod = obj["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["resources"]["limits"] and container["resources"]["requests"], name
        assert {"secretRef": {"name": "ent-enclave"}} in container["envFrom"], name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert "replicas" not in obj["spec"], "KEDA owns the replica count"
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_vllm_workers_land_on_gpu_nodes(objects: list[dict[str, Any]]) -> None:
    deployments = of_kind(objects, "Deployment")
    pod = deployments["ent-worker-vllm"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].startswith("enclave-vllm:")
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    cpu_pod = deployments["ent-worker-smollm2"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu_pod
    assert "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"]["limits"]


def test_a_disruption_budget_covers_every_stage(objects: list[dict[str, Any]]) -> None:
    deployments = of_kind(objects, "Deployment")
    budgets = of_kind(objects, "PodDisruptionBudget")
    for name, obj in deployments.items():
        pod_labels = obj["spec"]["template"]["metadata"]["labels"]
        covering = [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        ]
        assert len(covering) == 1, name
        spec = covering[0]["spec"]
        assert spec.get("minAvailable", 0) >= 1 or spec.get("maxUnavailable") == 1


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return bool(wanted.items() <= labels.items())


def test_only_the_gateway_takes_ingress_and_egress_is_listed(
    objects: list[dict[str, Any]],
) -> None:
    deployments = of_kind(objects, "Deployment")
    policies = list(of_kind(objects, "NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["policyTypes"] == ["Ingress", "Egress"]]
    assert len(deny) == 1 and "ingress" not in deny[0]["spec"] and "egress" not in deny[0]["spec"]
    metrics_port = 9400
    for name, obj in deployments.items():
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert _selects(deny[0], labels), name
        ingress_ports = {
            port["port"]
            for p in policies
            if _selects(p, labels)
            for rule in p["spec"].get("ingress", [])
            for port in rule["ports"]
        }
        expected = {metrics_port, 8000} if name == "ent-gateway" else {metrics_port}
        assert ingress_ports == expected, name
        for p in policies:
            if not _selects(p, labels):
                continue
            for rule in p["spec"].get("egress", []):
                for peer in rule["to"]:
                    assert "ipBlock" not in peer, f"{name}: egress to addresses"
                    assert peer["namespaceSelector"]["matchLabels"], name
                assert rule["ports"], name
    # The metrics port admits Prometheus alone, the gateway's port the ingress controller.
    (metrics,) = [p for p in policies if p["metadata"]["name"] == "ent-metrics-ingress"]
    (peer,) = metrics["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    # Memory alone may reach Qdrant; workers reach nothing but DNS and NATS.
    egress_ports: dict[str, set[int]] = {}
    for name, obj in deployments.items():
        labels = obj["spec"]["template"]["metadata"]["labels"]
        egress_ports[name] = {
            port["port"]
            for p in policies
            if _selects(p, labels)
            for rule in p["spec"].get("egress", [])
            for port in rule["ports"]
        }
    assert egress_ports["ent-worker-smollm2"] == {53, 4222}
    assert egress_ports["ent-memory"] == {53, 4222, 5432, 6379, 6333}
    assert 6333 not in egress_ports["ent-gateway"]


def test_without_keda_the_replicas_are_fixed() -> None:
    objects = render(merged(REQUIRED, {"keda": {"enabled": False}}))
    assert not of_kind(objects, "ScaledObject")
    deployments = of_kind(objects, "Deployment")
    assert deployments["ent-worker-smollm2"]["spec"]["replicas"] == 3
    assert deployments["ent-gateway"]["spec"]["replicas"] == 2


def test_secrets_are_required_unless_one_exists() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"nats\.password is required"):
        render({"postgres": REQUIRED["postgres"]})
    objects = render({"existingSecret": "made-elsewhere", "auditKeys": REQUIRED["auditKeys"]})
    assert not of_kind(objects, "Secret")
    for obj in of_kind(objects, "Deployment").values():
        container = obj["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "made-elsewhere"}}]


def test_the_registry_configmap_has_every_pool_a_worker_serves(
    objects: list[dict[str, Any]],
) -> None:
    registry = yaml.safe_load(of_kind(objects, "ConfigMap")["ent-registry"]["data"]["models.yaml"])
    workers = {
        n.removeprefix("ent-worker-") for n in of_kind(objects, "Deployment") if "-worker-" in n
    }
    assert workers == set(registry["pools"])


def test_audit_replicas_share_their_keys() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"auditKeys\.existingSecret"):
        render({k: v for k, v in REQUIRED.items() if k != "auditKeys"})
    # A shared home volume holds them instead.
    shared = {k: v for k, v in REQUIRED.items() if k != "auditKeys"}
    assert render(merged(shared, {"home": {"existingClaim": "enclave-home"}}))
    audit = of_kind(render(REQUIRED), "Deployment")["ent-audit"]["spec"]["template"]["spec"]
    (container,) = audit["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ENCLAVE_AUDIT_KEY_FILE"] == "/etc/enclave/audit-keys/audit.key"
    mounted = {v["name"]: v for v in audit["volumes"]}
    assert mounted["audit-keys"]["secret"]["secretName"] == "enclave-audit-keys"


def test_the_schema_is_migrated_once_before_the_stages_start(
    objects: list[dict[str, Any]],
) -> None:
    (job,) = of_kind(objects, "Job").values()
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["enclave", "migrate"]
    secret = of_kind(objects, "Secret")["ent-enclave"]["metadata"]["annotations"]
    # The Secret it reads is made first (a lower hook weight).
    assert int(secret["helm.sh/hook-weight"]) < int(hooks["helm.sh/hook-weight"])
    # Its network policy lets it reach PostgreSQL.
    policy = of_kind(objects, "NetworkPolicy")["ent-migrate-egress"]
    assert policy["spec"]["egress"][0]["ports"] == [{"port": 5432, "protocol": "TCP"}]
