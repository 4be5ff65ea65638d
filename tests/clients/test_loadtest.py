"""peaknet_serve.clients.loadtest: statistics, scheduling and thresholds as pure functions; the client's
handling of answers and failures against a small HTTP server on loopback, in one client process
and in several (``--processes``).

The loopback server speaks the PeakNet API's shape (``/ping``, ``POST /predictions/<model>``
with raw frames, JSON answer or JSON error) so that the client's checks, error accounting,
open-loop back-pressure and command line can be exercised without TorchServe. The real server
is driven in tests/e2e/test_loadtest_e2e.py.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

from peaknet_serve.clients import loadtest
from peaknet_serve.clients.loadtest import (
    RunPlan,
    Sample,
    TallyRecorder,
    Threshold,
    answer_error,
    ctrl_c_calls,
    error_kind,
    first_measured_slot,
    flat_metrics,
    late_threshold_s,
    latency_stats,
    open_loop_stats,
    parse_fail_on,
    send_schedule,
    split_count,
    split_load,
    summarize,
    tally_progress,
    violated,
)


def sample(start, latency_s=0.01, status=200, error=None, warmup=False, scheduled=math.nan, frames=2):
    return Sample(scheduled, start, start + latency_s, status, error, frames, 1000, 4000, warmup)


# ---------------------------------------------------------------------------- statistics


def test_latency_stats_match_numpy():
    values = np.random.default_rng(0).exponential(20.0, 1001)
    stats = latency_stats(values.tolist())
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert stats[name] == pytest.approx(np.percentile(values, q))
    assert stats["max"] == values.max() and stats["min"] == values.min()
    assert stats["mean"] == pytest.approx(values.mean())


def test_latency_stats_of_nothing_are_nan():
    assert all(math.isnan(v) for v in latency_stats([]).values())


def test_summarize_leaves_out_warmup_and_groups_errors():
    samples = [sample(0.0, 5.0, warmup=True)]  # a slow warm-up request must not count
    samples += [sample(1.0 + 0.1 * i) for i in range(10)]
    samples += [sample(2.0, status=503, error="http 503: busy"), sample(2.0, status=0, error="timeout")]
    samples += [sample(2.0, error="schema: 1 frames answered, sent 2")]
    report = summarize(samples)
    assert report["requests"] == 13 and report["ok"] == 10 and report["errors"] == 3
    assert report["error_rate"] == pytest.approx(3 / 13)
    assert report["errors_by_kind"] == {"503": 1, "schema": 1, "timeout": 1}
    window = (2.0 + 0.01) - 1.0  # first measured send to last answer (the errors at 2.0)
    assert report["window_s"] == pytest.approx(window)
    assert report["rps"] == pytest.approx(10 / window)
    assert report["fps"] == pytest.approx(20 / window)
    assert report["mb_per_s"] == pytest.approx(10 * 1000 / window / 1e6)
    assert report["frame_mb_per_s"] == pytest.approx(10 * 4000 / window / 1e6)
    assert report["latency_ms"]["max"] == pytest.approx(10.0)


def test_error_kinds():
    assert error_kind(sample(0, status=413, error="http 413: too large")) == "413"
    assert error_kind(sample(0, status=0, error="connection: ConnectionError")) == "connection"
    assert error_kind(sample(0, status=-1, error="dropped: in-flight bound")) == "dropped"


# ---------------------------------------------------------------------------- scheduling


def test_send_schedule_is_evenly_spaced():
    times = [send_schedule(120.0, i) for i in range(121)]
    assert times[0] == 0.0 and times[120] == pytest.approx(1.0)
    assert np.allclose(np.diff(times), 1 / 120)
    with pytest.raises(ValueError):
        send_schedule(0.0, 1)


def test_late_threshold_is_half_a_period_but_at_least_2ms():
    assert late_threshold_s(10.0) == pytest.approx(0.05)
    assert late_threshold_s(1000.0) == pytest.approx(0.002)


def test_plan_marks_warmup_then_stops_after_the_count():
    plan = RunPlan(warmup_s=1.0, duration_s=None, n_requests=3)
    assert plan.claim(0.5) == (0, True)
    assert [plan.claim(1.0 + i) for i in range(3)] == [(1, False), (2, False), (3, False)]
    assert plan.claim(9.0) is None and plan.stopped.is_set()
    assert plan.claim(0.1) is None  # stays stopped


def test_plan_stops_at_the_end_of_the_duration():
    plan = RunPlan(warmup_s=0.5, duration_s=2.0, n_requests=None)
    assert plan.claim(2.49) == (0, False)
    assert plan.claim(2.5) is None


def test_plan_hands_out_exactly_n_tickets_across_threads():
    plan = RunPlan(0.0, None, 500)
    tickets: list = []

    def worker():
        while (t := plan.claim(1.0)) is not None:
            tickets.append(t)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for i, _ in tickets) == list(range(500))


def test_plan_needs_a_bound():
    with pytest.raises(ValueError):
        RunPlan(1.0, None, None)


def test_open_loop_stats_detect_falling_behind():
    period = 0.01
    on_time = [sample(i * period + 0.0005, latency_s=0.3, scheduled=i * period) for i in range(100)]
    kept = open_loop_stats(on_time, 100.0)  # a long but constant latency is no backlog
    assert kept["late"] == 0 and kept["dropped"] == 0 and not kept["fell_behind"]
    assert kept["answered_hz"] == pytest.approx(100.0) and kept["lag_ms"]["max"] == pytest.approx(0.5)

    late = [sample(i * period + 0.02, latency_s=0.3, scheduled=i * period) for i in range(5)] + on_time[5:]
    behind = open_loop_stats(late, 100.0)
    assert behind["late"] == 5 and behind["late_fraction"] == pytest.approx(0.05) and behind["fell_behind"]

    dropped = on_time + [sample(1.0, 0.0, status=-1, error="dropped: in-flight bound", scheduled=1.0)]
    assert open_loop_stats(dropped, 100.0)["dropped"] == 1
    assert open_loop_stats(dropped, 100.0)["fell_behind"]

    # a backlog: each answer comes 10 ms later than the one before, relative to its send
    backlog = [sample(i * period, latency_s=0.01 * (i + 1), scheduled=i * period) for i in range(100)]
    growing = open_loop_stats(backlog, 100.0)
    assert growing["answered_hz"] == pytest.approx(50.0) and growing["fell_behind"]


# ---------------------------------------------------------------------------- thresholds


def test_parse_fail_on():
    assert parse_fail_on("p99_ms>250, error_rate>0.01,fps<100") == [
        Threshold("p99_ms", ">", 250.0),
        Threshold("error_rate", ">", 0.01),
        Threshold("fps", "<", 100.0),
    ]
    assert parse_fail_on("p50_ms>=10,rps<=5") == [Threshold("p50_ms", ">=", 10.0), Threshold("rps", "<=", 5.0)]
    assert parse_fail_on("") == []


@pytest.mark.parametrize(
    "spec, message", [("p99>250", "unknown metric"), ("fps=3", "no comparison"), ("fps<fast", "not a number")]
)
def test_parse_fail_on_rejects(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_fail_on(spec)


def test_violated_thresholds_name_the_measured_value():
    report = summarize([sample(1.0 + i, latency_s=0.3) for i in range(10)])
    assert violated(parse_fail_on("p99_ms>250,error_rate>0.01"), report) == ["p99_ms>250 (measured 300)"]
    assert violated(parse_fail_on("p99_ms>400"), report) == []
    empty = summarize([sample(1.0, status=500, error="http 500: x")])
    assert violated(parse_fail_on("p99_ms>1000"), empty) == ["p99_ms>1000 (measured nan)"]
    with pytest.raises(ValueError, match="open-loop"):
        violated(parse_fail_on("dropped>0"), report)
    assert "lag_p99_ms" in flat_metrics(summarize([sample(1.0, scheduled=1.0)], rate_hz=10.0))


def test_answer_error():
    good = json.dumps(
        {
            "model": "m",
            "precision": "p",
            "device": "d",
            "shape": [1, 1, 4, 4],
            "dtype": "uint16",
            "frames": [{"num_peaks": 0, "panel": [], "ss": [], "fs": [], "npix": [], "intensity": []}],
        }
    )
    assert answer_error(200, "application/json", good.encode(), 1) is None
    assert answer_error(200, "application/json", good.encode(), 2).startswith("schema: shape says 1 frames")
    assert answer_error(200, "text/html", b"<html>", 1) == "schema: content type 'text/html', not JSON"
    assert answer_error(200, "application/json", b"{", 1) == "schema: body is not JSON"
    body = json.dumps({"error": {"type": "bad_shape", "message": "X-Shape is 3 numbers"}}).encode()
    assert answer_error(400, "application/json", body, 1) == "http 400: bad_shape: X-Shape is 3 numbers"
    assert answer_error(502, "text/plain", b"Bad Gateway", 1) == "http 502: Bad Gateway"


# ---------------------------------------------------------------------------- against a loopback server


class PeakApi(BaseHTTPRequestHandler):
    """Answers like the PeakNet server: frame count from X-Shape, no peaks. Paths choose failures."""

    delay_s = 0.0
    token: str | None = None
    posts: list[str]  # paths of the POSTs received, one list per server (see the fixture)

    def log_message(self, *args):
        pass

    def _send(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self):
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(401, {"code": 401, "type": "InvalidKeyException", "message": "Token Authentication failed"})
            return False
        return True

    def do_GET(self):
        if self._authorised():
            self._send(200, {"status": "Healthy"})

    def do_POST(self):
        self.posts.append(self.path)
        self.rfile.read(int(self.headers["Content-Length"]))
        if not self._authorised():
            return
        time.sleep(self.delay_s)
        if self.path.endswith("/broken"):
            return self._send(415, {"error": {"type": "unsupported_media_type", "message": "send raw"}})
        n = int(self.headers["X-Shape"].split(",")[0])
        if self.path.endswith("/short"):
            n -= 1
        frame = {"num_peaks": 1, "panel": [0], "ss": [3.0], "fs": [4.0], "npix": [5], "intensity": [60.0]}
        self._send(
            200,
            {
                "model": "peaknet",
                "precision": "float32",
                "device": "cpu",
                "shape": [n, 2, 48, 64],
                "dtype": "uint16",
                "frames": [frame] * n,
            },
        )


@pytest.fixture
def api():
    handler = type("Api", (PeakApi,), {"posts": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.handler = handler
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


COMMON = ["--geometry", "2,48,64", "--simulator", "spots", "--frames-per-request", "2", "--quiet", "--warmup", "0.2"]


@pytest.fixture
def run_client(api, tmp_path):
    """``run_client(*argv, common=COMMON)``: the client's ``main`` against the loopback API with
    ``common`` then ``argv`` (the later of repeated options wins) and a report file; returns the
    exit code and the report."""

    def run(*argv: str, common: list[str] = COMMON) -> tuple[int, dict]:
        path = tmp_path / "report.json"
        code = loadtest.main(["--url", api.url, *common, *argv, "--report", str(path)])
        return code, json.loads(path.read_text())

    return run


def test_closed_loop_run_reports_and_plots(run_client, tmp_path, capsys):
    plot_path = tmp_path / "latency.png"
    code, report = run_client(
        "--concurrency", "3", "--requests", "40", "--plot", str(plot_path), "--fail-on", "error_rate>0"
    )
    assert code == loadtest.EXIT_OK
    assert report["requests"] == 40 and report["ok"] == 40 and report["errors"] == 0
    assert report["fps"] == pytest.approx(2 * report["rps"])
    assert report["config"]["mode"] == "closed" and report["config"]["request_bytes"] == 2 * 2 * 48 * 64 * 2
    assert report["config"]["processes"] == 1
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "40 ok" in capsys.readouterr().out


def test_error_answers_are_counted_and_fail_the_run(run_client):
    code, report = run_client("--model", "broken", "--requests", "10", "--fail-on", "error_rate>0.5")
    assert code == loadtest.EXIT_THRESHOLDS
    assert report["errors_by_kind"] == {"415": 10}
    assert report["first_errors"] == ["http 415: unsupported_media_type: send raw"]


def test_wrong_frame_count_is_a_schema_error(run_client):
    _, report = run_client("--model", "short", "--requests", "5")
    assert report["errors_by_kind"] == {"schema": 5}


def test_open_loop_keeps_up_with_a_fast_server(run_client):
    code, report = run_client("--rate", "40", "--duration", "1.5", "--fail-on", "dropped>0,error_rate>0")
    assert code == loadtest.EXIT_OK, report
    assert report["open_loop"]["sent"] == pytest.approx(60, abs=2)
    assert report["open_loop"]["dropped"] == 0


def test_open_loop_drops_sends_when_the_server_falls_behind(run_client, api):
    api.handler.delay_s = 0.25  # 2 in flight at most: 8 Hz, asked for 40 Hz
    code, report = run_client("--rate", "40", "--max-in-flight", "2", "--duration", "1.0", "--fail-on", "dropped>0")
    assert code == loadtest.EXIT_THRESHOLDS
    assert report["open_loop"]["fell_behind"] and report["open_loop"]["dropped"] > 20
    assert report["errors_by_kind"]["dropped"] == report["open_loop"]["dropped"]


def test_token_from_key_file_is_sent(run_client, api, tmp_path):
    api.handler.token = "secret-key"
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "secret-key"}}))
    code, _ = run_client("--requests", "3", "--key-file", str(key_file), "--fail-on", "errors>0")
    assert code == loadtest.EXIT_OK
    assert loadtest.main(["--url", api.url, *COMMON, "--requests", "3"]) == loadtest.EXIT_UNREACHABLE


def test_unreachable_server_exits_before_sending(api, capsys):
    url = api.url
    api.shutdown()
    api.server_close()
    assert loadtest.main(["--url", url, *COMMON, "--requests", "1"]) == loadtest.EXIT_UNREACHABLE
    assert "server not ready" in capsys.readouterr().err


def test_frames_from_a_file_are_sent(run_client, tmp_path):
    import h5py

    path = tmp_path / "run.cxi"
    with h5py.File(path, "w") as f:
        f["/entry_1/data_1/data"] = np.zeros((5, 96, 64), np.uint16)
    common = ["--input", str(path), "--panels", "2", "--frames-per-request", "2", "--warmup", "0", "--quiet"]
    code, report = run_client("--requests", "6", common=common)
    assert code == 0
    assert report["ok"] == 6 and report["config"]["request_bytes"] == 2 * 96 * 64 * 2


def test_command_line_rejects_open_loop_metrics_in_a_closed_loop():
    with pytest.raises(SystemExit):
        loadtest.parse_args(["--fail-on", "dropped>0"])
    with pytest.raises(SystemExit):
        loadtest.parse_args(["--concurrency", "0"])
    assert loadtest.parse_args([]).duration == 10.0


def test_a_run_that_measured_nothing_fails(run_client, api):
    api.handler.delay_s = 1.0  # every request outlasts warm-up + duration
    code, report = run_client("--duration", "0.3")
    assert code == loadtest.EXIT_NOTHING_MEASURED
    assert report["requests"] == 0


# ---------------------------------------------------------------------------- several client processes


def command_line(*argv):
    return loadtest.parse_args(["--quiet", *argv])


def test_split_count():
    assert split_count(10, 3) == [4, 3, 3] and split_count(9, 3) == [3, 3, 3] and split_count(1, 3) == [1, 0, 0]


def test_closed_loop_split_spreads_clients_and_requests_with_them():
    shares = split_load(command_line("--concurrency", "5", "--processes", "2", "--requests", "41"))
    assert [s.clients for s in shares] == [3, 2]
    assert [s.n_requests for s in shares] == [9 + 8 + 8, 8 + 8]  # 41 over 5 clients: 9, 8, 8, 8, 8
    assert [s.n_requests for s in split_load(command_line("--concurrency", "5", "--processes", "2"))] == [None, None]
    (whole,) = split_load(command_line("--concurrency", "5", "--requests", "41"))
    assert whole.clients == 5 and whole.n_requests == 41


def test_first_measured_slot():
    assert first_measured_slot(50.0, 0.1) == 5 and first_measured_slot(10.0, 0.0) == 0
    assert first_measured_slot(10.0, 0.3) == 3  # 0.3 * 10 is 3.0000000000000004 in floating point
    assert first_measured_slot(3.0, 1.01) == 4


@pytest.mark.parametrize(
    "rate, warmup, processes, requests",
    [(50, 0.1, 2, 7), (40, 0.2, 3, 10), (120, 2.0, 4, 501), (30, 0, 2, 1), (7, 0.3, 3, 5)],
)
def test_open_loop_split_sends_the_first_measured_slots_once(rate, warmup, processes, requests):
    args = command_line(
        "--rate",
        str(rate),
        "--warmup",
        str(warmup),
        "--processes",
        str(processes),
        "--requests",
        str(requests),
        "--max-in-flight",
        "7",
    )
    shares = split_load(args)
    assert sum(s.max_in_flight for s in shares) == 7
    measured = []
    for share in shares:  # what run_open_loop claims from each process's plan
        plan = RunPlan(warmup, None, share.n_requests)
        for slot in itertools.count(share.first_slot, share.slot_step):
            if (ticket := plan.claim(send_schedule(rate, slot))) is None:
                break
            if not ticket[1]:
                measured.append(slot)
    first = first_measured_slot(rate, warmup)
    assert sorted(measured) == list(range(first, first + requests))


def test_tally_recorder_publishes_its_counts():
    tally = multiprocessing.get_context("fork").RawArray("q", 3)
    recorder = TallyRecorder(tally)
    recorder.begin()
    recorder.begin()
    assert list(tally) == [0, 0, 2]
    recorder.end(sample(1.0))
    recorder.end(sample(1.0, status=0, error="timeout"))
    recorder.drop(sample(1.0, status=-1, error="dropped: in-flight bound"))
    assert list(tally) == [3, 2, 0] and len(recorder.samples) == 3


def test_tally_progress_sums_the_processes():
    tallies = [[10, 1, 2], [6, 1, 1]]
    line = tally_progress(tallies, warmup_s=1.0)
    assert line(0.5) == "[warm-up    0.5s] 16 req, 2 err,   28.0 req/s, in flight 3"
    tallies[0][0] = 20
    assert line(2.5) == "[measure    2.5s] 26 req, 2 err,    5.0 req/s, in flight 3"  # 10 more in 2 s


def test_processes_may_not_outnumber_clients(capsys):
    with pytest.raises(SystemExit):
        loadtest.parse_args(["--concurrency", "2", "--processes", "3"])
    assert "--concurrency 2 is less than --processes 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        loadtest.parse_args(["--rate", "10", "--max-in-flight", "1", "--processes", "2"])
    with pytest.raises(SystemExit):
        loadtest.parse_args(["--processes", "0"])
    assert loadtest.parse_args(["--rate", "10", "--processes", "8"]).processes == 8  # --concurrency is unused


@pytest.fixture
def kept(monkeypatch):
    """The samples that the client processes sent back to ``main``."""
    kept = SimpleNamespace(samples=None)
    measure = loadtest.measure_in_processes

    def keep(*args):
        kept.samples, failures = measure(*args)
        return kept.samples, failures

    monkeypatch.setattr(loadtest.cli, "measure_in_processes", keep)
    return kept


def test_one_process_starts_no_other(run_client, monkeypatch):
    monkeypatch.setattr(loadtest.cli, "measure_in_processes", lambda *args: pytest.fail("started client processes"))
    assert run_client("--requests", "5", "--processes", "1")[0] == loadtest.EXIT_OK


def test_closed_loop_in_two_processes(run_client, api, kept):
    code, report = run_client("--concurrency", "3", "--processes", "2", "--requests", "40", "--fail-on", "error_rate>0")
    assert code == loadtest.EXIT_OK, report
    assert report["requests"] == 40 and report["ok"] == 40 and report["errors"] == 0
    assert report["fps"] == pytest.approx(2 * report["rps"]) and report["latency_ms"]["p99"] > 0
    assert report["config"]["processes"] == 2 and report["config"]["concurrency"] == 3
    assert "client_failures" not in report
    # every request the server saw came back as a sample: the warm-up and the 40 measured ones
    assert len(kept.samples) == len(api.handler.posts) and sum(not s.warmup for s in kept.samples) == 40
    assert any(s.warmup for s in kept.samples)


def test_open_loop_in_two_processes_keeps_the_schedule(run_client, kept):
    code, report = run_client(
        "--rate", "40", "--processes", "2", "--duration", "1.5", "--fail-on", "dropped>0,error_rate>0"
    )
    assert code == loadtest.EXIT_OK, report
    slots = [send_schedule(40.0, i) for i in range(200) if 0.2 <= send_schedule(40.0, i) < 0.2 + 1.5]
    assert sorted(s.scheduled for s in kept.samples if not s.warmup) == slots  # each slot once
    assert report["open_loop"]["sent"] == len(slots) == 60 and report["open_loop"]["dropped"] == 0
    assert report["open_loop"]["answered_hz"] == pytest.approx(40.0, rel=0.1)
    assert report["config"]["processes"] == 2 and report["config"]["mode"] == "open"


def test_open_loop_request_count_in_two_processes(run_client, kept):
    code, report = run_client("--warmup", "0.1", "--rate", "50", "--processes", "2", "--requests", "7")
    assert code == loadtest.EXIT_OK
    # slot 5 is the first after the warm-up: process 1 sends 5, 7, 9, 11 and process 0 sends 6, 8, 10
    assert sorted(s.scheduled for s in kept.samples if not s.warmup) == [send_schedule(50.0, i) for i in range(5, 12)]
    assert report["requests"] == 7


def test_thresholds_apply_to_the_merged_report(run_client):
    code, report = run_client(
        "--model", "broken", "--concurrency", "2", "--processes", "2", "--requests", "10", "--fail-on", "error_rate>0.5"
    )
    assert code == loadtest.EXIT_THRESHOLDS
    assert report["errors_by_kind"] == {"415": 10}


def test_a_client_process_that_dies_fails_the_run(run_client, monkeypatch, capsys):
    run_share = loadtest.run_share

    def run_or_die(target, plan, share, *rest):
        if share.clients == 1:  # the second of two processes for 3 clients
            os._exit(3)
        run_share(target, plan, share, *rest)

    monkeypatch.setattr(loadtest.processes, "run_share", run_or_die)
    code, report = run_client("--concurrency", "3", "--processes", "2", "--requests", "40")
    assert code == loadtest.EXIT_CLIENT_DIED
    assert report["client_failures"] == ["client process 1 exited with code 3 before sending its samples"]
    assert report["requests"] == 14 + 13  # the share of the process that lived: 2 of the 3 clients
    assert "FAIL client process 1 exited with code 3" in capsys.readouterr().err


@pytest.mark.parametrize("delivery", ["process", "other thread"])
def test_ctrl_c_reports_what_the_processes_measured(run_client, capsys, delivery):
    """The kernel hands a process-directed SIGINT to any thread; delivered to one that is not the
    main thread, it must still stop the run (CI once waited out the whole 30 s)."""
    before = signal.getsignal(signal.SIGINT)

    def press_ctrl_c():  # once the client processes run, well after the warm-up
        deadline = time.monotonic() + 10
        while signal.getsignal(signal.SIGINT) is before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.6)
        if delivery == "process":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    started = time.monotonic()
    code, report = run_client("--concurrency", "2", "--processes", "2", "--duration", "30")
    assert time.monotonic() - started < 10 and code == loadtest.EXIT_OK
    assert report["requests"] > 0 and report["errors"] == 0 and report["window_s"] < 5
    assert "interrupted: reporting what was measured" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_in_one_process_stops_the_closed_loop_whichever_thread_gets_it(run_client, capsys):
    def press_ctrl_c():  # after the 0.2 s warm-up, from a thread that is not the main one
        time.sleep(1.0)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    started = time.monotonic()
    code, report = run_client("--concurrency", "2", "--processes", "1", "--duration", "30")
    assert time.monotonic() - started < 10 and code == loadtest.EXIT_OK
    assert report["requests"] > 0 and report["errors"] == 0 and report["window_s"] < 5
    assert "interrupted: reporting what was measured" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_counts_the_requests_of_all_processes(api, monkeypatch, kept):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["--url", api.url, *(a for a in COMMON if a != "--quiet"), "--concurrency", "2", "--processes", "2"]
    assert loadtest.main([*argv, "--duration", "1.0"]) == loadtest.EXIT_OK
    lines = [line for line in terminal.getvalue().split("\r\x1b[2K") if " req, " in line]
    assert len(lines) >= 2 and lines[-1].startswith("[measure")
    shown = int(lines[-1].split("] ")[1].split(" req")[0])
    assert 0 < shown <= len(kept.samples)


def test_ctrl_c_within_a_plan_sets_state_instead_of_raising():
    """The handler only marks the plan, so a Ctrl-C that Python delivers inside code that swallows
    exceptions (a finaliser, a catch-all cleanup) still stops the run at the next claim."""
    before = signal.getsignal(signal.SIGINT)
    plan = RunPlan(0.0, 60.0, None)
    with ctrl_c_calls(plan.interrupt):
        assert plan.claim(1.0) == (0, False)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs in this (main) thread
        except BaseException:  # noqa: BLE001 - what the handler must not raise
            pytest.fail("Ctrl-C raised inside ctrl_c_calls")
        assert plan.interrupted and not plan.stopped.is_set()
        assert plan.claim(2.0) is None and plan.stopped.is_set()
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_calls_outside_the_main_thread_installs_nothing():
    before, seen = signal.getsignal(signal.SIGINT), []

    def body():
        with ctrl_c_calls(lambda: None):
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before]
