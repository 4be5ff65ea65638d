"""A real Prometheus server scrapes a real TorchServe and evaluates deploy/prometheus/peaknet-rules.yaml.

Skipped where no ``prometheus`` binary is installed (Debian: ``apt-get install prometheus``). The server
gets its own TorchServe, so every count is exact: requests, frames and hits as Prometheus stores them
must equal what the clients sent and what the server answered; quantiles come from histogram_quantile
over the scraped buckets.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import yaml

from peaknet_serve.serve.metrics import PEAK_BUCKETS
from tests.frames import spot_frames

pytestmark = pytest.mark.e2e
PROMETHEUS = shutil.which("prometheus")
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "peaknet-rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "peaknet.json"
# series that exist only after a 4xx, a 5xx or on a GPU
OPTIONAL_SERIES = ("PeakNetBadRequests", "Requests5XX", "PeakNetGpuMemory")
HIT_MIN_PEAKS = 5
TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "peaknet", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address={urlsplit(self.url).netloc}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> list[dict]:
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.name}")
            try:
                value = self.value(expr)
            except requests.RequestException:
                value = None
            if value is not None and predicate(value):
                return value
            time.sleep(0.5)
        raise TimeoutError(f"{expr} did not reach the expected value in {timeout} s (last: {value})")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def scraped(start_server, tmp_path_factory):
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary (Debian: apt-get install prometheus)")
    server = start_server(PEAKNET_HIT_MIN_PEAKS=str(HIT_MIN_PEAKS))
    prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), urlsplit(server.metrics_url).netloc)
    try:
        prometheus.wait_for('up{job="peaknet"}', lambda v: v == 1)
        yield server, prometheus
    finally:
        prometheus.stop()


def native(server, frames: np.ndarray) -> tuple[list[int], float]:
    started = time.perf_counter()
    answer = requests.post(
        server.predict_url,
        data=frames.tobytes(),
        timeout=TIMEOUT,
        headers={
            **server.headers,
            "Content-Type": "application/octet-stream",
            "X-Dtype": str(frames.dtype),
            "X-Shape": ",".join(map(str, frames.shape)),
        },
    )
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    return [f["num_peaks"] for f in answer.json()["frames"]], elapsed


def oip(server, frames: np.ndarray) -> tuple[list[int], float]:
    tensor = {
        "name": "frames",
        "datatype": "UINT16",
        "shape": list(frames.shape),
        "parameters": {"binary_data_size": frames.nbytes},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    started = time.perf_counter()
    answer = requests.post(
        f"{server.inference_url}/v2/models/peaknet/infer",
        data=header + frames.tobytes(),
        timeout=TIMEOUT,
        headers={**server.headers, "Inference-Header-Content-Length": str(len(header))},
    )
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    num_peaks = [o for o in answer.json()["outputs"] if o["name"] == "num_peaks"][0]["data"]
    return num_peaks, elapsed


def test_prometheus_scrapes_histograms_and_evaluates_the_rules(scraped):
    server, prometheus = scraped
    peaks, round_trips = [], []
    counts, elapsed = native(server, spot_frames(n=1, seed=100))  # the series exist from here on
    peaks += counts
    round_trips.append(elapsed)
    prometheus.wait_for("sum(PeakNetRequestSeconds_count)", lambda v: v == 1)

    sent = {"native": 1, "oip": 0}
    for seed in range(6):
        frames = spot_frames(n=2, seed=seed, spots=2 + 3 * seed)
        protocol = "oip" if seed % 2 else "native"
        counts, elapsed = (oip if protocol == "oip" else native)(server, frames)
        peaks += counts
        round_trips.append(elapsed)
        sent[protocol] += 1
    requests_sent = sum(sent.values())
    prometheus.wait_for("sum(PeakNetRequestSeconds_count)", lambda v: v == requests_sent)

    by_protocol = {
        r["metric"]["Protocol"]: float(r["value"][1])
        for r in prometheus.query("sum by (Protocol) (PeakNetRequestSeconds_count)")
    }
    assert by_protocol == sent
    prometheus.wait_for("sum(PeakNetFramesServed)", lambda v: v == len(peaks))
    assert prometheus.value("sum(PeakNetPeaksFound)") == sum(peaks)
    hits = sum(c >= HIT_MIN_PEAKS for c in peaks)
    assert 0 < hits < len(peaks), f"the frames should be a mix of hits and misses: {peaks}"
    assert prometheus.value(f'sum(PeakNetHitFrames{{MinPeaks="{HIT_MIN_PEAKS}"}})') == hits

    # latency: quantiles over the scraped buckets, bounded by what the clients measured
    p50 = prometheus.value("histogram_quantile(0.5, sum by (le) (rate(PeakNetRequestSeconds_bucket[1m])))")
    p99 = prometheus.value("histogram_quantile(0.99, sum by (le) (rate(PeakNetRequestSeconds_bucket[1m])))")
    assert p50 is not None and p99 is not None and math.isfinite(p99)
    assert 0 < p50 <= p99 <= 10
    handler_total = prometheus.value("sum(PeakNetRequestSeconds_sum)")
    assert 0 < handler_total <= sum(round_trips), "time in the handler cannot exceed the clients' round trips"
    stages = {r["metric"]["Stage"] for r in prometheus.query("sum by (Stage) (PeakNetStageSeconds_count)")}
    assert stages == {"decode", "h2d", "inference", "postprocess", "handle"}

    # peaks per frame: the median from the buckets lies in the bucket holding the true median
    median = prometheus.value("histogram_quantile(0.5, sum by (le) (PeakNetFramePeaks_bucket))")
    true_median = sorted(peaks)[math.ceil(len(peaks) / 2) - 1]
    bounds = [-1, *PEAK_BUCKETS]
    upper = next(b for b in PEAK_BUCKETS if b >= true_median)
    lower = bounds[bounds.index(upper) - 1]
    assert max(lower, 0) <= median <= upper

    # the recording and alerting rules, evaluated by Prometheus on the scraped series
    prometheus.wait_for("peaknet:request_seconds:p99_5m", lambda v: 0 < v <= 10)
    prometheus.wait_for("peaknet:frames_served:rate5m", lambda v: v > 0)
    prometheus.wait_for("peaknet:hit_ratio:5m", lambda v: 0 < v < 1)
    assert prometheus.value("peaknet:queue_wait_seconds:mean5m") >= 0
    alerts = {r["metric"]["alertname"] for r in prometheus.query("ALERTS")}
    assert "PeakNetNoWorker" not in alerts and "PeakNetDown" not in alerts


def test_every_dashboard_query_answers_from_the_scraped_data(scraped):
    server, prometheus = scraped
    for _ in range(3):
        native(server, spot_frames(n=2, seed=7))
    prometheus.wait_for("sum(PeakNetFramesServed)", lambda v: v >= 6)
    time.sleep(2)  # two more scrapes: rate() needs two samples after the last requests
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if t.get("expr")]
    assert len(queries) >= 15
    for query in queries:
        expr = query.replace("$instance", ".*").replace("$__rate_interval", "1m")
        result = prometheus.query(expr)
        if not any(name in expr for name in OPTIONAL_SERIES):
            assert result, f"no data for the dashboard query {query}"
