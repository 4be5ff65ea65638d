#!/usr/bin/env python3
"""End-to-end benchmark: TorchServe + PeakNet under the load-test client, vs TorchServe's ceiling.

    python -m benchmarks.bench_e2e --out benchmarks/results/e2e_h200.json            # GPU host
    python -m benchmarks.bench_e2e --small --out /tmp/e2e_cpu.json                   # CPU smoke run
    python -m benchmarks.bench_e2e --gpus 1 2 --model-config model_store/peaknet/peaknet.yaml \
        /tmp/peaknet673m/peaknet.yaml --variants compiled --out benchmarks/results/e2e_multigpu.json

Starts one TorchServe on loopback serving, side by side:
  echo            a handler that only copies each body to the GPU (TorchServe's own ceiling),
                  with the same workers and batching
  peaknet-<name>  one archive per serving variant (see ``VARIANTS``): model YAML, precision,
                  torch.compile, workers, batch size
(for each GPU count in ``--gpus``, one server with ``number_of_gpu=N`` and ``workers x N``
workers, spread over the GPUs by TorchServe) then runs ``scripts/loadtest.py`` in closed loop (one ePix10k2M uint16 frame per request, several
concurrency levels) and open loop (120 Hz) against each, and writes JSON + markdown + a PNG. The
load test runs in ``--client-processes`` processes (at most one per client), so that one Python
process pushing ~1 GB/s is not what limits the measured rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.timing import environment, markdown_table, progress, write_results
from peaknet_serve.launch.archive import build
from peaknet_serve.launch.server import (
    torchserve_command,
    torchserve_env,
    wait_ready,
    write_loopback_config,
)

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "eager": {"compile": False},
    "compiled": {"compile": True, "compile_mode": "default"},
    "compiled-pure": {"compile": True, "compile_mode": "default", "autocast": False},
    "compiled-16threads": {"compile": True, "compile_mode": "default", "torch_threads": 16},
}


def model_config(variant: dict, workers: int, batch_size: int, delay_ms: int, warmup_shape) -> dict:
    handler = {
        "config": "peaknet.yaml", "precision": "auto", "max_batch_panels": 64,
        "warmup": True, "warmup_shapes": [list(warmup_shape)], "panel_buckets": [16, 32, 64],
        "max_frames": 16, "max_pixels": 16 * 16 * 352 * 384, **variant,
    }
    return {"minWorkers": workers, "maxWorkers": workers, "batchSize": batch_size,
            "maxBatchDelay": delay_ms, "responseTimeout": 120, "startupTimeout": 900, "handler": handler}


def build_echo(store: Path, workers: int = 1, batch_size: int = 4, delay_ms: int = 5) -> None:
    """echo.mar: the echo handler with the same workers and batching as the PeakNet targets."""
    config = store.parent / "echo-config.yaml"
    config.write_text(yaml.safe_dump({"minWorkers": workers, "maxWorkers": workers,
                                      "batchSize": batch_size, "maxBatchDelay": delay_ms}))
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    subprocess.run([str(archiver) if archiver.exists() else "torch-model-archiver",
                    "--model-name", "echo", "--version", "1.0",
                    "--handler", str(ROOT / "benchmarks" / "echo_handler.py"),
                    "--config-file", str(config), "--export-path", str(store), "--force"], check=True)


def start(workdir: Path, store: Path, models: list[str], gpus: int) -> tuple[subprocess.Popen, dict[str, str]]:
    # tokens off: the load generator sends no key (a private server on loopback for the length of the run)
    urls = write_loopback_config(workdir / "config.properties", store, models,
                                 {"job_queue_size": "1024", "number_of_gpu": str(gpus)}, token_auth=False)
    env = torchserve_env(workdir / "logs", {"TMPDIR": str(workdir)})
    with open(workdir / "torchserve.out", "wb") as log:  # the server keeps its own copy
        process = subprocess.Popen(torchserve_command(workdir / "config.properties", foreground=True),
                                   cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return process, urls


TS_COUNTERS = ("ts_inference_requests_total", "ts_inference_latency_microseconds",
               "ts_queue_latency_microseconds")
HANDLER_COUNTERS = ("PeakNetBatches", "PeakNetHandleMsTotal", "PeakNetDecodeMsTotal", "PeakNetInferenceMsTotal",
                    "PeakNetPostprocessMsTotal")


def metrics_lines(metrics_url: str) -> list[str]:
    """The lines of TorchServe's Prometheus ``/metrics`` page; none when it does not answer."""
    import requests
    try:
        return requests.get(f"{metrics_url}/metrics", timeout=10).text.splitlines()
    except requests.RequestException:
        return []


def scrape_counters(metrics_url: str, model: str) -> dict[str, float]:
    """TorchServe's per-model request/latency counters and the handler's stage-time counters
    (see handler/metrics.py) from /metrics, summed over the model's workers."""
    values = dict.fromkeys(TS_COUNTERS + HANDLER_COUNTERS, 0.0)
    for line in metrics_lines(metrics_url):
        name, _, rest = line.partition("{")
        if name in values and (f'model_name="{model}"' in rest or f'ModelName="{model}"' in rest):
            values[name] += float(line.rsplit(" ", 1)[1])
    return values


def scrape_gauge_max(metrics_url: str, model: str, name: str = "PeakNetGpuMemoryReservedMB") -> float | None:
    """The largest value of the handler's gauge ``name`` over the model's workers (their last
    published values) from /metrics; None when no worker published it (CPU, or no batch yet)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics_lines(metrics_url)
              if line.startswith(name + "{") and (f'model_name="{model}"' in line or f'ModelName="{model}"' in line)]
    return max(values, default=None)


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Between two scrapes: TorchServe's mean inference and queue ms per request (the frontend's
    view: the worker's whole round trip), the mean requests per batch, and the handler's own ms
    per batch (whole ``handle``, and its inference stage). TorchServe's inference ms minus the
    handler's is what the backend spends outside the handler: moving the bytes in and out."""
    delta = {k: after[k] - before[k] for k in after}
    requests_done, batches = delta["ts_inference_requests_total"], delta["PeakNetBatches"]
    per_request = lambda key: delta[key] / requests_done / 1e3 if requests_done > 0 else None  # noqa: E731
    per_batch = lambda key: delta[key] / batches if batches > 0 else None  # noqa: E731
    return {"server_infer_ms": per_request("ts_inference_latency_microseconds"),
            "server_queue_ms": per_request("ts_queue_latency_microseconds"),
            "requests_per_batch": requests_done / batches if batches > 0 else None,
            "handler_ms_per_batch": per_batch("PeakNetHandleMsTotal"),
            "handler_infer_ms_per_batch": per_batch("PeakNetInferenceMsTotal")}


def loadtest(url: str, model: str, report: Path, args, *, concurrency: int | None = None,
             rate: float | None = None) -> dict:
    processes = args.client_processes if rate else min(args.client_processes, concurrency)
    cmd = [sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--url", url, "--model", model,
           "--geometry", args.geometry, "--dtype", "uint16", "--encoding", "raw",
           "--duration", str(args.duration), "--warmup", str(args.warmup_s), "--quiet",
           "--processes", str(processes), "--report", str(report)]
    cmd += ["--rate", str(rate)] if rate else ["--concurrency", str(concurrency)]
    subprocess.run(cmd, check=False, cwd=ROOT)
    return json.loads(report.read_text())


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = [r for r in rows if r["loop"] == "closed"]
    several = len({r.get("gpus", 1) for r in closed}) > 1
    label = lambda r: f"{r['target']} ({r.get('gpus', 1)} GPU)" if several else r["target"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for target in sorted({label(r) for r in closed}):
        pts = sorted((r["concurrency"], r["fps"], r["p99_ms"]) for r in closed if label(r) == target)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=target)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=target)
    ax1.set(xlabel="concurrent clients", ylabel="frames/s (1 frame per request)", title="throughput")
    ax2.set(xlabel="concurrent clients", ylabel="p99 latency (ms)", title="tail latency", yscale="log")
    ax1.axhline(120, color="grey", linestyle=":", label="120 Hz")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def serve_and_measure(args, gpus: int, warmup_shape, rows: list[dict], save) -> None:
    """Build the archives, start one TorchServe on ``gpus`` GPUs and load-test every target;
    append a row per load test to ``rows`` and call ``save(rows)`` after each."""
    workdir = Path(tempfile.mkdtemp(prefix="peaknet-e2e-"))
    store = workdir / "store"
    store.mkdir()
    targets = ["echo"]
    workers = {"echo": max(1, gpus) * max(args.workers)}
    build_echo(store, workers["echo"], args.batch_size, args.delay_ms)
    for config in args.model_config:
        for name in args.variants.split(","):
            for per_gpu in args.workers:
                # model_store/peaknet/peaknet.yaml -> peaknet-eager (-w4 when several worker counts)
                target = f"{config.parent.name}-{name}" + (f"-w{per_gpu}" if len(args.workers) > 1 else "")
                if target in targets:
                    raise SystemExit(f"two models would be served as {target}: put their YAMLs in distinct folders")
                workers[target] = max(1, gpus) * per_gpu
                cfg = workdir / f"{target}.yaml"
                cfg.write_text(yaml.safe_dump(model_config(VARIANTS[name], workers[target],
                                                           args.batch_size, args.delay_ms, warmup_shape)))
                build(config, None, cfg, store, model_name=target)
                targets.append(target)

    server, urls = start(workdir, store, targets, gpus)
    url = urls["inference"]
    try:
        for target in targets:
            progress(f"waiting for {target} ...")
            wait_ready(url, urls["management"], target, 900,
                       alive=lambda: server.poll() is None)
        for target in targets:
            loops = [("closed", c, None) for c in args.concurrency]
            if args.rate:
                loops.append(("open", None, args.rate))
            for loop, concurrency, rate in loops:
                progress(f"{target}: {loop} loop {concurrency or rate} ...")
                before = scrape_counters(urls["metrics"], target)
                report = loadtest(url, target, workdir / f"{target}-{loop}-{concurrency or rate}.json", args,
                                  concurrency=concurrency, rate=rate)
                measured = server_side(before, scrape_counters(urls["metrics"], target))
                latency = report["latency_ms"]
                rows.append({"gpus": gpus, "target": target, "workers": workers[target], "loop": loop,
                             "concurrency": concurrency,
                             "rate_hz": rate, "fps": report["fps"], "rps": report["rps"],
                             "mb_per_s": report["mb_per_s"],
                             "p50_ms": latency.get("p50"), "p99_ms": latency.get("p99"), **measured,
                             "gpu_reserved_mb": scrape_gauge_max(urls["metrics"], target),
                             "error_rate": report["error_rate"],
                             "fell_behind": report.get("open_loop", {}).get("fell_behind")})
                progress(f"  {rows[-1]['fps']:.1f} frames/s, p99 {rows[-1]['p99_ms']} ms")
                save(rows)              # after every row: a run cut short keeps what it measured
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        logs = workdir / "logs" / "model_log.log"
        if logs.exists() and os.environ.get("OUT"):
            shutil.copy(logs, Path(os.environ["OUT"]) / f"e2e_model_log_{gpus}gpu.log")


def scaling_efficiency(rows: list[dict]) -> None:
    """Add ``fraction_of_echo`` (same GPU count and clients) and ``scaling_efficiency``
    = frames/s at N GPUs / (N x frames/s at 1 GPU) for the same target and load, in place."""
    key = lambda r: (r["target"], r["loop"], r["concurrency"], r["rate_hz"])
    single = {key(r): r["fps"] for r in rows if r["gpus"] == 1}
    echo = {(r["gpus"], r["concurrency"]): r["fps"] for r in rows
            if r["target"] == "echo" and r["loop"] == "closed"}
    for row in rows:
        base = single.get(key(row))
        row["scaling_efficiency"] = row["fps"] / (row["gpus"] * base) if base and row["gpus"] > 1 else None
        ceiling = echo.get((row["gpus"], row["concurrency"]))
        row["fraction_of_echo"] = row["fps"] / ceiling if ceiling else None


COLUMNS = [("gpus", "GPUs"), ("target", "served"), ("workers", "workers"), ("loop", "loop"),
           ("concurrency", "clients"), ("rate_hz", "rate Hz"), ("fps", "frames/s"), ("p50_ms", "p50 ms"),
           ("p99_ms", "p99 ms"), ("server_infer_ms", "TS infer ms/req"), ("server_queue_ms", "TS queue ms/req"),
           ("requests_per_batch", "req/batch"), ("handler_ms_per_batch", "handler ms/batch"),
           ("handler_infer_ms_per_batch", "of which infer"), ("gpu_reserved_mb", "GPU reserved MB/worker"),
           ("fraction_of_echo", "÷ echo"),
           ("scaling_efficiency", "scaling eff."), ("error_rate", "errors"), ("fell_behind", "fell behind")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", type=Path, nargs="+",
                        default=[ROOT / "model_store/peaknet/peaknet.yaml"],
                        help="PeakNet YAMLs to serve (with weights)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workers", type=int, nargs="+", default=[2],
                        help="workers per GPU (per server on CPU); several values serve one target each")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1],
                        help="GPU counts to measure in turn (e.g. 1 2 4); scaling efficiency vs 1")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--delay-ms", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--rate", type=float, default=120.0, help="open-loop rate (0 = skip)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--geometry", default="epix10k2m")
    parser.add_argument("--client-processes", type=int, default=4,
                        help="load-test client processes (loadtest.py --processes; at most one per client)")
    parser.add_argument("--small", action="store_true", help="tiny model, 2x64x96 frames (CPU smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/e2e.json")
    args = parser.parse_args()

    warmup_shape = (16, 352, 384)
    if args.small:
        args.model_config = [ROOT / "tests/fixtures/upstream/peaknet_tiny.yaml"]
        args.variants, args.workers, args.concurrency = "eager", [1], [2]
        args.rate, args.duration, args.warmup_s, args.geometry = 0, 3.0, 1.0, "2,64,96"
        warmup_shape = (2, 64, 96)

    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict] = []

    def save(rows: list[dict]) -> None:
        scaling_efficiency(rows)
        table = markdown_table(rows, COLUMNS)
        write_results(args.out, {"environment": environment(device), "settings": {
            "workers_per_gpu": args.workers, "gpus": args.gpus, "batch_size": args.batch_size,
            "delay_ms": args.delay_ms, "geometry": args.geometry, "duration_s": args.duration,
            "client_processes": args.client_processes}, "rows": rows}, table)

    for gpus in args.gpus:
        progress(f"=== {gpus} GPU(s): {args.workers} worker(s) per GPU ===")
        serve_and_measure(args, gpus, warmup_shape, rows, save)
    save(rows)
    print(markdown_table(rows, COLUMNS))
    plot(rows, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
