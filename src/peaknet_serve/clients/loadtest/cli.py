"""The payload pool and the command line (``peaknet-loadtest``)."""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import multiprocessing.connection
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import requests

from peaknet_serve.clients.client import KeySource
from peaknet_serve.clients.loadtest.constants import (
    EXIT_CLIENT_DIED,
    EXIT_NOTHING_MEASURED,
    EXIT_OK,
    EXIT_THRESHOLDS,
    EXIT_UNREACHABLE,
    MAX_POOL_BYTES,
)
from peaknet_serve.clients.loadtest.loops import Recorder, Target
from peaknet_serve.clients.loadtest.plan import RunPlan, ctrl_c_calls
from peaknet_serve.clients.loadtest.processes import measure_in_processes, run_share, split_load
from peaknet_serve.clients.loadtest.report import format_report, progress_line, save_plot, watch_progress
from peaknet_serve.clients.loadtest.request import Sample
from peaknet_serve.clients.loadtest.stats import OPEN_LOOP_METRICS, parse_fail_on, summarize, violated
from peaknet_serve.clients.payloads import (
    ENCODINGS,
    GEOMETRIES,
    SIMULATORS,
    EncodedRequest,
    detector_frames,
    encode_request,
    geometry_from_name,
    iter_frames,
)
from peaknet_serve.wire import DEFAULT_DATASET, DEFAULT_URL


def build_payloads(args: argparse.Namespace) -> list[EncodedRequest]:
    """Pre-encoded requests to cycle through (at most ``--distinct``, at most ~512 MB in all)."""
    if args.input:
        blocks = iter_frames(args.input, args.dataset, args.frames_per_request, args.panels)
        first = next(blocks)[1]
        per_request = first.nbytes
        source = itertools.chain([first], (block for _, block in blocks))
    else:
        geometry = geometry_from_name(args.geometry)
        per_request = args.frames_per_request * geometry.pixels * np.dtype(args.dtype).itemsize
        source = (
            detector_frames(geometry, args.frames_per_request, args.dtype, args.seed + i, args.simulator)
            for i in itertools.count()
        )
    count = max(1, min(args.distinct, MAX_POOL_BYTES // max(per_request, 1)))
    return [encode_request(frames, args.encoding) for frames in itertools.islice(source, count)]


def check_ready(base_url: str, auth: KeySource, timeout_s: float = 10.0) -> str | None:
    """``None`` when ``GET /ping`` answers 200, else why not."""
    try:
        answer = requests.get(f"{base_url}/ping", headers=auth.headers(), timeout=timeout_s)
    except requests.RequestException as err:
        return f"{base_url}/ping: {type(err).__name__}: {err}"
    if answer.status_code != 200:
        return f"{base_url}/ping answered {answer.status_code}: {answer.text[:200]}"
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"inference address (default {DEFAULT_URL})")
    p.add_argument("--model", default="peaknet", help="model name (default peaknet)")
    p.add_argument("--token", help="inference key (TorchServe token authorisation)")
    p.add_argument("--key-file", help="TorchServe key_file.json to read the inference key from")
    src = p.add_argument_group("payload")
    src.add_argument("--geometry", default="epix10k2m", help=f"{', '.join(GEOMETRIES)} or P,H,W (default epix10k2m)")
    src.add_argument("--dtype", default="uint16", help="simulated pixel dtype (default uint16)")
    src.add_argument(
        "--simulator",
        default="auto",
        choices=SIMULATORS,
        help="peaksim (physical SFX frames), spots (Gaussian spots), auto: peaksim if importable",
    )
    src.add_argument("--input", help="send frames from this HDF5/CXI file instead of simulated ones")
    src.add_argument("--dataset", default=DEFAULT_DATASET, help=f"frames in --input (default {DEFAULT_DATASET})")
    src.add_argument("--panels", type=int, help="split each --input slab (N, P*H, W) into P panels")
    src.add_argument("--encoding", default="raw", choices=ENCODINGS, help="request encoding (default raw)")
    src.add_argument("--frames-per-request", type=int, default=1, help="frames in each request (default 1)")
    src.add_argument("--distinct", type=int, default=4, help="distinct payloads to cycle through (default 4)")
    src.add_argument("--seed", type=int, default=0)
    load = p.add_argument_group("load")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, default=4, help="closed loop: concurrent clients (default 4)")
    mode.add_argument("--rate", type=float, help="open loop: target requests per second (e.g. 120)")
    load.add_argument("--max-in-flight", type=int, default=32, help="open loop: drop sends beyond this (default 32)")
    load.add_argument("--duration", type=float, help="measured seconds (default 10 unless --requests)")
    load.add_argument("--requests", type=int, help="measured requests")
    load.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up, not measured (default 2)")
    load.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in s (default 60)")
    load.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes to spread the load over (default 1): one Python process can limit "
        "the rate of large requests; the progress line then has no latency",
    )
    out = p.add_argument_group("output")
    out.add_argument("--report", help="write the JSON report here")
    out.add_argument("--plot", help="write a PNG of latency over time and its histogram here")
    out.add_argument("--fail-on", default="", help='exit 1 if any holds, e.g. "p99_ms>250,error_rate>0.01,fps<100"')
    out.add_argument("--quiet", action="store_true", help="no live progress line")
    args = p.parse_args(argv)
    if args.duration is None and args.requests is None:
        args.duration = 10.0
    for name in ("frames_per_request", "distinct", "concurrency", "max_in_flight", "processes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if (args.duration is not None and args.duration <= 0) or (args.requests is not None and args.requests < 1):
        p.error("--duration and --requests must be positive")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be positive")
    if args.processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        p.error("--processes > 1 needs the fork start method (Linux)")
    per_process = ("max_in_flight", args.max_in_flight) if args.rate is not None else ("concurrency", args.concurrency)
    if per_process[1] < args.processes:
        p.error(f"--{per_process[0].replace('_', '-')} {per_process[1]} is less than --processes {args.processes}")
    try:
        args.thresholds = parse_fail_on(args.fail_on)
    except ValueError as err:
        p.error(str(err))
    open_only = sorted({t.metric for t in args.thresholds} & set(OPEN_LOOP_METRICS))
    if open_only and args.rate is None:
        p.error(f"--fail-on {', '.join(open_only)}: only an open-loop run (--rate) measures these")
    return args


def measure(target: Target, args: argparse.Namespace, clock: Callable[[], float]) -> list[Sample]:
    """Run the whole load in this process; Ctrl-C stops it and keeps what was measured."""
    (share,) = split_load(args)
    plan = RunPlan(args.warmup, args.duration, share.n_requests)
    recorder = Recorder()

    def line(now: float) -> str:
        return progress_line(list(recorder.samples), now, recorder, plan.warmup_s)

    progress = None if args.quiet else watch_progress(line, plan.stopped, clock, sys.stderr)
    with ctrl_c_calls(plan.interrupt):
        try:
            run_share(target, plan, share, args.rate, recorder, clock)
        except KeyboardInterrupt:  # outside the main thread, where no handler could be installed
            plan.interrupt()
    plan.stop()
    if plan.interrupted:
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
    if progress is not None:
        progress.join()
    return recorder.samples


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base_url = args.url.rstrip("/")
    auth = KeySource(args.token, args.key_file)
    if (why := check_ready(base_url, auth)) is not None:
        print(f"server not ready: {why}", file=sys.stderr)
        return EXIT_UNREACHABLE
    payloads = build_payloads(args)
    target = Target(f"{base_url}/predictions/{args.model}", payloads, auth, args.timeout)
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    if args.processes == 1:
        samples, failures = measure(target, args, clock), []
    else:
        samples, failures = measure_in_processes(target, args, clock)

    report = summarize(samples, args.rate)
    report["config"] = {
        "url": target.url,
        "mode": "open" if args.rate is not None else "closed",
        "concurrency": None if args.rate is not None else args.concurrency,
        "rate_hz": args.rate,
        "encoding": args.encoding,
        "source": args.input or f"simulated {args.geometry} {args.dtype}",
        "frames_per_request": args.frames_per_request,
        "request_bytes": len(payloads[0].body),
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "max_requests": args.requests,
        "processes": args.processes,
    }
    if failures:
        report["client_failures"] = failures
    print(format_report(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    if args.plot:
        save_plot(samples, report, args.plot)
    if failures:
        for failure in failures:
            print(f"FAIL {failure}: its requests are missing from the report", file=sys.stderr)
        return EXIT_CLIENT_DIED
    if report["requests"] == 0:
        print(
            "FAIL no request was measured: every request outlasted the run; raise --duration "
            "or --timeout, or lower --warmup",
            file=sys.stderr,
        )
        return EXIT_NOTHING_MEASURED
    broken = violated(args.thresholds, report)
    for line in broken:
        print(f"FAIL {line}", file=sys.stderr)
    return EXIT_THRESHOLDS if broken else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
