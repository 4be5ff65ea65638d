"""Monitoring under deploy/: Prometheus rules (promtool check + unit tests), the Grafana dashboard
(regenerated with grafanalib and compared; every query valid PromQL), and the Prometheus operator's
ServiceMonitor and PrometheusRule (schema-valid, consistent with the Service and the rule file).

promtool ships with Debian's ``prometheus`` package; the promtool tests skip where it is absent.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "peaknet-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "peaknet-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "peaknet.json"
DASHBOARD_SOURCE = ROOT / "deploy" / "grafana" / "peaknet.dashboard.py"
K8S = ROOT / "deploy" / "k8s"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool (Debian: apt-get install prometheus)")
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "1m"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def dashboard_queries(dashboard: dict) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []) if t.get("expr")]


def with_variables(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


@needs_promtool
def test_rules_pass_promtool_check():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


@needs_promtool
def test_rules_pass_their_unit_tests():
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_catches_a_broken_rule_and_a_wrong_expectation(tmp_path):
    rules = yaml.safe_load(RULES.read_text())
    broken = copy.deepcopy(rules)
    broken["groups"][1]["rules"][2]["expr"] = "peaknet:request_seconds:p99_5m > > 0.5"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert promtool("check", "rules", str(tmp_path / "broken.yaml")).returncode != 0

    looser = copy.deepcopy(rules)  # a 2 s budget: the over-budget test case must now fail
    looser["groups"][1]["rules"][2]["expr"] = "peaknet:request_seconds:p99_5m > 2"
    (tmp_path / "peaknet-rules.yaml").write_text(yaml.safe_dump(looser))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0 and "PeakNetLatencyP99OverBudget" in result.stdout + result.stderr


def test_every_alert_of_the_issue_is_there_and_unit_tested():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "PeakNetDown",
        "PeakNetNoWorker",
        "PeakNetLatencyP99OverBudget",
        "PeakNetServerErrors",
        "PeakNetFallingBehind",
    } <= alerts
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    assert fired == alerts, "every alert needs a unit test case in which it fires"


def test_dashboard_json_is_what_grafanalib_generates(tmp_path):
    gen = pytest.importorskip("grafanalib._gen", reason="pip install -e '.[test]' (grafanalib)")
    output = tmp_path / "peaknet.json"
    assert gen.generate_dashboard(["-o", str(output), str(DASHBOARD_SOURCE)]) == 0
    assert json.loads(output.read_text()) == json.loads(DASHBOARD.read_text()), (
        "deploy/grafana/peaknet.json is stale: generate-dashboard -o deploy/grafana/peaknet.json "
        "deploy/grafana/peaknet.dashboard.py"
    )


def test_dashboard_panels_and_variables():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "peaknet-serve"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "instance"]
    queries = dashboard_queries(dashboard)
    text = "\n".join(queries)
    for metric in (
        "PeakNetRequestSeconds_bucket",
        "PeakNetStageSeconds_bucket",
        "PeakNetFramePeaks_bucket",
        "PeakNetHitFrames",
        "PeakNetFramesServed",
        "ts_queue_latency_microseconds",
        "Requests5XX",
    ):
        assert metric in text
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    queries = [with_variables(q) for q in dashboard_queries(json.loads(DASHBOARD.read_text()))]
    assert not [q for q in queries if "$" in q], "a Grafana variable without a test value"
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query:{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(tmp_path / "dashboard.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------- Prometheus operator resources


def operator_objects() -> dict[str, dict]:
    docs = [d for path in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    return {d["kind"]: d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")}


@pytest.fixture(scope="module")
def schema() -> Draft202012Validator:
    document = json.loads((K8S / "monitoring.schema.json").read_text())
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PrometheusRule"])
def test_operator_resources_match_the_schema(schema, kind):
    assert [e.message for e in schema.iter_errors(operator_objects()[kind])] == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds"),
        lambda d: d["spec"]["endpoints"][0].update(prot="metrics"),
        lambda d: d["spec"].pop("selector"),
        lambda d: d.update(apiVersion="monitoring.coreos.com/v1alpha1"),
    ],
)
def test_schema_catches_service_monitor_mistakes(schema, mutate):
    broken = copy.deepcopy(operator_objects()["ServiceMonitor"])
    mutate(broken)
    assert list(schema.iter_errors(broken))


def test_service_monitor_scrapes_the_service_metrics_port_as_job_peaknet():
    monitor = operator_objects()["ServiceMonitor"]
    service = next(d for d in yaml.safe_load_all((K8S / "service.yaml").read_text()) if d and d["kind"] == "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports[endpoint["port"]] == 8082 and endpoint["path"] == "/metrics"
    # without jobLabel the operator names the job after the Service: what the rules select
    assert "jobLabel" not in monitor["spec"]
    assert re.search(r'up\{job="([^"]+)"\}', RULES.read_text()).group(1) == service["metadata"]["name"]


def test_prometheus_rule_carries_the_rule_file():
    assert operator_objects()["PrometheusRule"]["spec"] == yaml.safe_load(RULES.read_text())
