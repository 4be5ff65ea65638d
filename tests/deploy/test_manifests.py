"""Kubernetes and KServe manifests under deploy/: schema-valid, and consistent with each other and
with the image (ports, probes, env variables the entrypoint reads, the HPA's metric).

Kubernetes objects are validated with ``kubernetes-validate`` (strict: unknown fields fail) against
the Kubernetes version it ships schemas for. The KServe InferenceService is a CRD that
kubernetes-validate does not know: its fields are checked against the JSON schema in
deploy/kserve/, and its predictor container against the Kubernetes Container schema. The Prometheus
operator's ServiceMonitor and PrometheusRule are checked in tests/deploy/test_monitoring.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
from jsonschema import Draft202012Validator  # noqa: E402
from kubernetes_validate.utils import ValidationError, latest_version, validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve"
K8S_VERSION = latest_version()


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def objects() -> dict[str, dict]:
    return {doc["kind"]: doc for path in sorted(K8S.glob("*.yaml")) for doc in load(path)}


def entrypoint_variables() -> set[str]:
    return set(re.findall(r"PEAKNET_[A-Z_]+", (ROOT / "docker" / "entrypoint.sh").read_text()))


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifest_is_schema_valid(path):
    for doc in load(path):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus operator CRDs: tests/deploy/test_monitoring.py validates them
        validate(doc, K8S_VERSION, strict=True)


def test_validation_can_fail():
    deployment = copy.deepcopy(objects()["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/ping"  # typo of path
    with pytest.raises(ValidationError):
        validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(objects()["Deployment"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(ValidationError):
        validate(deployment, K8S_VERSION, strict=True)


def test_the_kinds_needed_for_scale_out_are_there():
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "NetworkPolicy"} <= set(objects())
    assert objects()["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"


def container_of(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_requests_gpus_and_probes_ping():
    deployment = objects()["Deployment"]
    container = container_of(deployment)
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PEAKNET_GPUS"] == resources["limits"]["nvidia.com/gpu"], "one worker set per requested GPU"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"inference": 8080, "metrics": 8082}
    # ready = a worker is READY (the health check asks the management API); alive = TorchServe's /ping
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["/opt/venv/bin/python", "/opt/peaknet/docker/healthcheck.py"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "inference"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_deployment_env_is_what_the_entrypoint_reads():
    names = {e["name"] for e in container_of(objects()["Deployment"])["env"]}
    assert names <= entrypoint_variables()
    # the /ping probe carries no key: token authorisation must be off where it is a plain httpGet
    env = container_of(objects()["Deployment"])["env"]
    assert {"name": "PEAKNET_DISABLE_TOKEN_AUTH", "value": "true"} in env
    assert {"name": "PEAKNET_METRICS_BIND_ADDRESS", "value": "0.0.0.0"} in env  # scraped on the pod IP


def test_service_and_policy_select_the_pods():
    pod_labels = objects()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = objects()["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["port"] for p in service["spec"]["ports"]} == {8080, 8082}
    policy = objects()["NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_hpa_scales_the_deployment_on_the_adapter_metric():
    hpa, deployment = objects()["HorizontalPodAutoscaler"], objects()["Deployment"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rules = yaml.safe_load(objects()["ConfigMap"]["data"]["config.yaml"])["rules"]
    (rule,) = rules
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert "ts_queue_latency_microseconds" in rule["seriesQuery"]
    assert "ts_inference_requests_total" in rule["metricsQuery"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


# ---------------------------------------------------------------------------- KServe


@pytest.fixture(scope="module")
def inference_service() -> dict:
    (doc,) = load(KSERVE / "inferenceservice.yaml")
    return doc


@pytest.fixture(scope="module")
def kserve_schema() -> Draft202012Validator:
    schema = json.loads((KSERVE / "inferenceservice.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_inference_service_matches_its_schema(inference_service, kserve_schema):
    errors = [e.message for e in kserve_schema.iter_errors(inference_service)]
    assert errors == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["predictor"]["containers"][0].pop("image"),
        lambda d: d["spec"]["predictor"].update(scaleMetric="gpu"),
        lambda d: d["spec"]["predictor"]["containers"][0]["ports"][0].update(containerPort=9000),
        lambda d: d.update(apiVersion="serving.kserve.io/v1alpha1"),
        lambda d: d["spec"].update(predictr={}),
    ],
)
def test_schema_catches_mistakes(inference_service, kserve_schema, mutate):
    broken = copy.deepcopy(inference_service)
    mutate(broken)
    assert list(kserve_schema.iter_errors(broken))


def test_inference_service_container_is_a_valid_kubernetes_container(inference_service):
    (container,) = inference_service["spec"]["predictor"]["containers"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [container]}}
    validate(pod, K8S_VERSION, strict=True)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.pop("PROTOCOL") == "v2", "KServe reads a custom predictor's protocol from PROTOCOL"
    assert set(env) <= entrypoint_variables()
    assert container["readinessProbe"]["httpGet"] == {"path": "/ping", "port": 8080}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    annotations = inference_service["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == "8082"
