"""A short load test against the real TorchServe (the session ``server`` fixture): closed and open
loop, every answer checked by the client, thresholds evaluated as in CI."""

from __future__ import annotations

import json

import pytest

from peaknet_serve.clients import loadtest

pytestmark = pytest.mark.e2e

SMALL = ["--geometry", "2,128,128", "--simulator", "spots", "--quiet"]


def auth_args(server) -> list[str]:
    token = server.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return ["--token", token] if token else []


def test_closed_loop_against_the_server(server, tmp_path):
    report_path, plot_path = tmp_path / "report.json", tmp_path / "latency.png"
    code = loadtest.main(
        [
            "--url",
            server.inference_url,
            *auth_args(server),
            *SMALL,
            "--encoding",
            "hdf5-bslz4",
            "--frames-per-request",
            "2",
            "--concurrency",
            "3",
            "--warmup",
            "1",
            "--duration",
            "5",
            "--report",
            str(report_path),
            "--plot",
            str(plot_path),
            "--fail-on",
            "error_rate>0,fps<1",
        ]
    )
    report = json.loads(report_path.read_text())
    assert code == loadtest.EXIT_OK, report
    assert report["ok"] >= 3 and report["errors"] == 0
    assert report["fps"] == pytest.approx(2 * report["rps"], rel=1e-6)
    assert plot_path.stat().st_size > 0


def test_open_loop_at_a_rate_the_server_sustains(server, tmp_path):
    report_path = tmp_path / "report.json"
    code = loadtest.main(
        [
            "--url",
            server.inference_url,
            *auth_args(server),
            *SMALL,
            "--encoding",
            "raw",
            "--rate",
            "4",
            "--max-in-flight",
            "8",
            "--warmup",
            "1",
            "--duration",
            "4",
            "--report",
            str(report_path),
            "--fail-on",
            "error_rate>0,dropped>0",
        ]
    )
    report = json.loads(report_path.read_text())
    assert code == loadtest.EXIT_OK, report
    assert report["open_loop"]["sent"] >= 14 and report["open_loop"]["dropped"] == 0


def test_a_request_over_the_server_limit_is_reported_as_413(server, tmp_path):
    report_path = tmp_path / "report.json"
    # the e2e server allows 8 frames per request
    loadtest.main(
        [
            "--url",
            server.inference_url,
            *auth_args(server),
            *SMALL,
            "--frames-per-request",
            "9",
            "--requests",
            "2",
            "--warmup",
            "0",
            "--distinct",
            "1",
            "--report",
            str(report_path),
        ]
    )
    assert json.loads(report_path.read_text())["errors_by_kind"] == {"413": 2}
