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
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.timing import environment, markdown_table, progress, write_results
from peaknet_serve.launch.archive import build
from peaknet_serve.launch.mps import MpsDaemon
from peaknet_serve.launch.server import (
    spawn_foreground,
    stop_foreground,
    torchserve_env,
    write_loopback_config,
)

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "eager": {"compile": False},
    "compiled": {"compile": True, "compile_mode": "default"},
    "compiled-pure": {"compile": True, "compile_mode": "default", "autocast": False},
    "compiled-16threads": {"compile": True, "compile_mode": "default", "torch_threads": 16},
    # a 48-panel bucket: a batch of three ePix10k2M frames runs as 48 panels, not padded to 64
    "compiled-b48": {"compile": True, "compile_mode": "default", "panel_buckets": [16, 32, 48, 64]},
    # workers sleep on a blocking CUDA event while their GPU work runs, instead of polling it
    "compiled-block": {"compile": True, "compile_mode": "default", "gpu_wait": "block"},
    "compiled-pure-block": {"compile": True, "compile_mode": "default", "autocast": False, "gpu_wait": "block"},
}


def model_config(variant: dict, workers: int, batch_size: int, delay_ms: int, warmup_shape) -> dict:
    handler = {
        "config": "peaknet.yaml",
        "precision": "auto",
        "max_batch_panels": 64,
        "warmup": True,
        "warmup_shapes": [list(warmup_shape)],
        "panel_buckets": [16, 32, 64],
        "max_frames": 16,
        "max_pixels": 16 * 16 * 352 * 384,
        **variant,
    }
    return {
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": batch_size,
        "maxBatchDelay": delay_ms,
        "responseTimeout": 120,
        "startupTimeout": 900,
        "handler": handler,
    }


def build_echo(store: Path, workers: int = 1, batch_size: int = 4, delay_ms: int = 5) -> None:
    """echo.mar: the echo handler with the same workers and batching as the PeakNet targets."""
    config = store.parent / "echo-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"minWorkers": workers, "maxWorkers": workers, "batchSize": batch_size, "maxBatchDelay": delay_ms}
        )
    )
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    subprocess.run(
        [
            str(archiver) if archiver.exists() else "torch-model-archiver",
            "--model-name",
            "echo",
            "--version",
            "1.0",
            "--handler",
            str(ROOT / "benchmarks" / "echo_handler.py"),
            "--config-file",
            str(config),
            "--export-path",
            str(store),
            "--force",
        ],
        check=True,
    )


def start(
    workdir: Path, store: Path, models: list[str], gpus: int, env_extra: dict[str, str]
) -> tuple[subprocess.Popen, dict[str, str]]:
    """TorchServe in the foreground on free loopback ports, its temp files (Inductor's and Triton's
    caches too) under ``workdir``: every start begins with cold caches except what ``env_extra`` names."""
    # tokens off: the load generator sends no key (a private server on loopback for the length of the run)
    urls = write_loopback_config(
        workdir / "config.properties",
        store,
        models,
        {"job_queue_size": "1024", "number_of_gpu": str(gpus)},
        token_auth=False,
    )
    env = torchserve_env(
        workdir / "logs",
        {
            "TMPDIR": str(workdir),
            "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor"),
            "TRITON_CACHE_DIR": str(workdir / "triton"),
            **env_extra,
        },
    )
    return spawn_foreground(workdir, env), urls


def wait_workers(
    management_url: str, expected: dict[str, int], started: float, timeout: float, alive
) -> dict[str, list[float]]:
    """Poll the management API until every model has ``expected[model]`` READY workers.

    Returns:
        per model, the seconds from ``started`` (a ``time.monotonic()``) at which each worker was
        first seen READY (polled every 0.5 s), ascending.
    """
    import requests

    ready: dict[str, dict[str, float]] = {model: {} for model in expected}
    deadline = started + timeout
    while any(len(ready[m]) < n for m, n in expected.items()):
        if not alive():
            raise RuntimeError("TorchServe exited during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"workers not ready after {timeout:.0f} s: { {m: len(r) for m, r in ready.items()} } of {expected}"
            )
        for model, seen in ready.items():
            try:
                workers = requests.get(f"{management_url}/models/{model}", timeout=2).json()[0].get("workers", [])
            except (requests.RequestException, ValueError, IndexError, KeyError):
                continue
            now = time.monotonic() - started
            for worker in workers:
                if worker.get("status") == "READY":
                    seen.setdefault(str(worker.get("id")), now)
        time.sleep(0.5)
    return {model: sorted(seen.values()) for model, seen in ready.items()}


#: the handler's start-up line (serve/handler.py), per worker in model_log.log
STARTUP_LINE = re.compile(
    r"W-\d+-(?P<model>.+?)_[^_-]+-stdout.*start-up (?P<total>[\d.]+) s \(load (?P<load>[\d.]+), "
    r"tune (?P<tune>[\d.]+), warm-up (?P<warmup>[\d.]+), compile cache (?P<cache>\w+)\)"
)


def handler_startups(log_dir: Path) -> dict[str, list[dict]]:
    """Per model, each worker's start-up as its handler logged it: seconds in total, loading the
    weights, tuning, warming up (compiling), and whether the compile cache was hit."""
    found: dict[str, list[dict]] = {}
    path = log_dir / "model_log.log"
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        match = STARTUP_LINE.search(line)
        if match:
            fields = match.groupdict()
            found.setdefault(fields.pop("model"), []).append(
                {k: v if k == "cache" else float(v) for k, v in fields.items()}
            )
    return found


def process_tree_cpu(pid: int) -> dict[int, float]:
    """User + system CPU seconds of process ``pid`` and each of its live descendants (the frontend,
    the workers and their HDF5 reader processes), by process id."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    seconds = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def cpu_seconds_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two :func:`process_tree_cpu` snapshots by the processes alive at the
    second (a process that ended in between is left out: a lower bound)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


TS_COUNTERS = ("ts_inference_requests_total", "ts_inference_latency_microseconds", "ts_queue_latency_microseconds")
HANDLER_COUNTERS = (
    "PeakNetBatches",
    "PeakNetHandleMsTotal",
    "PeakNetDecodeMsTotal",
    "PeakNetInferenceMsTotal",
    "PeakNetPostprocessMsTotal",
    "PeakNetFramesServed",
    "PeakNetCappedFrames",
)


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
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics_lines(metrics_url)
        if line.startswith(name + "{") and (f'model_name="{model}"' in line or f'ModelName="{model}"' in line)
    ]
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
    return {
        "server_infer_ms": per_request("ts_inference_latency_microseconds"),
        "server_queue_ms": per_request("ts_queue_latency_microseconds"),
        "requests_per_batch": requests_done / batches if batches > 0 else None,
        "handler_ms_per_batch": per_batch("PeakNetHandleMsTotal"),
        "handler_infer_ms_per_batch": per_batch("PeakNetInferenceMsTotal"),
    }


def loadtest(
    url: str,
    model: str,
    report: Path,
    args,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    encoding: str = "raw",
) -> dict:
    processes = args.client_processes if rate else min(args.client_processes, concurrency)
    cmd = [
        sys.executable,
        "-m",
        "peaknet_serve.clients.loadtest.cli",
        "--url",
        url,
        "--model",
        model,
        "--geometry",
        args.geometry,
        "--dtype",
        "uint16",
        "--encoding",
        encoding,
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup_s),
        "--quiet",
        "--processes",
        str(processes),
        "--report",
        str(report),
    ]
    cmd += ["--rate", str(rate)] if rate else ["--concurrency", str(concurrency)]
    subprocess.run(cmd, check=False, cwd=ROOT)
    return json.loads(report.read_text())


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = [r for r in rows if r["loop"] == "closed" and r.get("encoding", "raw") == "raw"]
    several = len({r.get("gpus", 1) for r in closed}) > 1

    def label(row: dict) -> str:
        name = row["target"] + (" MPS" if row.get("mps") else "") + (" AOT" if row.get("backend") == "aoti" else "")
        return f"{name} ({row.get('gpus', 1)} GPU)" if several else name

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


@dataclass(frozen=True)
class Target:
    """One model served: its archive's name, workers in all, requests per TorchServe batch, and
    TorchServe's maxBatchDelay (ms) for it."""

    name: str
    workers: int
    batch_size: int
    delay_ms: int | None = None


def build_targets(args, store: Path, gpus: int, warmup_shape) -> list[Target]:
    """Write one archive per model config x variant x workers x batch size (and echo.mar) into ``store``."""
    per_gpu = max(1, gpus)
    targets = []
    if not args.skip_echo:
        build_echo(store, per_gpu * max(args.workers), max(args.batch_size), args.delay_ms[0])
        targets.append(Target("echo", per_gpu * max(args.workers), max(args.batch_size), args.delay_ms[0]))
    for config in args.model_config:
        for name in args.variants.split(","):
            for workers, batch, delay in itertools.product(args.workers, args.batch_size, args.delay_ms):
                # model_store/peaknet/peaknet.yaml -> peaknet-eager (-w4, -b8, -d20 when several values)
                target = (
                    f"{config.parent.name}-{name}"
                    + (f"-w{workers}" if len(args.workers) > 1 else "")
                    + (f"-b{batch}" if len(args.batch_size) > 1 else "")
                    + (f"-d{delay}" if len(args.delay_ms) > 1 else "")
                )
                if any(t.name == target for t in targets):
                    raise SystemExit(f"two models would be served as {target}: put their YAMLs in distinct folders")
                cfg = store.parent / f"{target}.yaml"
                cfg.write_text(
                    yaml.safe_dump(model_config(VARIANTS[name], per_gpu * workers, batch, delay, warmup_shape))
                )
                build(config, None, cfg, store, model_name=target)
                targets.append(Target(target, per_gpu * workers, batch, delay))
    return targets


def serve_and_measure(
    args,
    gpus: int,
    mps: bool,
    starts: int,
    warmup_shape,
    rows: list[dict],
    startups: list[dict],
    save,
    backend: str = "inductor",
) -> None:
    """Build the archives, start TorchServe on ``gpus`` GPUs (under MPS when ``mps``, compiling with
    ``compile_backend: backend``) ``starts`` times against one compile cache, recording how long its
    workers took to become READY, and load-test every target on the last start; append rows and
    call ``save()`` after each."""
    workdir = Path(tempfile.mkdtemp(prefix="peaknet-e2e-"))
    store = workdir / "store"
    store.mkdir()
    targets = build_targets(args, store, gpus, warmup_shape)
    env = {"PEAKNET_CACHE_DIR": str(args.cache_dir)} if args.cache_dir else {"PEAKNET_COMPILE_CACHE": "false"}
    daemon = MpsDaemon.start(workdir / "mps") if mps else None
    if daemon is not None:
        env.update(daemon.env)
    env["PEAKNET_COMPILE_BACKEND"] = backend
    label = {"gpus": gpus, "mps": mps, "backend": backend}
    try:
        for start_index in range(starts):
            rundir = workdir / f"start{start_index}"
            rundir.mkdir()
            began = time.monotonic()
            server, urls = start(rundir, store, [t.name for t in targets], gpus, env)
            try:
                ready = wait_workers(
                    urls["management"],
                    {t.name: t.workers for t in targets},
                    began,
                    args.ready_timeout,
                    alive=lambda server=server: server.poll() is None,
                )
                logged = handler_startups(rundir / "logs")
                for target in targets:
                    startups.append(
                        {
                            **label,
                            "start": start_index,
                            "target": target.name,
                            "workers": target.workers,
                            "first_ready_s": ready[target.name][0],
                            "all_ready_s": ready[target.name][-1],
                            "handler": logged.get(target.name, []),
                        }
                    )
                    progress(
                        f"start {start_index}: {target.name} workers READY after "
                        f"{ready[target.name][0]:.1f}-{ready[target.name][-1]:.1f} s"
                    )
                save()
                if start_index == starts - 1:
                    measure_targets(args, server, urls, targets, label, rows, save, rundir)
            finally:
                stop_foreground(server)
                logs = rundir / "logs" / "model_log.log"
                if logs.exists() and args.logs_dir is not None:
                    args.logs_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copy(
                        logs, args.logs_dir / f"model_log_{gpus}gpu_mps{int(mps)}_{backend}_start{start_index}.log"
                    )
    finally:
        if daemon is not None:
            daemon.stop()


def measure_targets(
    args,
    server: subprocess.Popen,
    urls: dict[str, str],
    targets: list[Target],
    label: dict,
    rows: list[dict],
    save,
    rundir: Path,
) -> None:
    """Closed loops at every concurrency and the open loop at ``args.rate`` (raw frames) for every target,
    then closed loops at the largest concurrency for each of ``args.encodings`` on the first PeakNet target."""
    url = urls["inference"]
    compressed_on = next((t.name for t in targets if t.name != "echo"), None)
    for target in targets:
        loops = [("closed", c, None, "raw") for c in args.concurrency]
        if args.rate and target.name != "echo":
            loops.append(("open", None, args.rate, "raw"))
        if target.name == compressed_on:
            loops += [("closed", max(args.concurrency), None, e) for e in args.encodings if e != "raw"]
        for loop, concurrency, rate, encoding in loops:
            progress(f"{target.name}: {loop} loop {concurrency or rate} {encoding} ...")
            before = scrape_counters(urls["metrics"], target.name)
            cpu_before = process_tree_cpu(server.pid)
            report = loadtest(
                url,
                target.name,
                rundir / f"{target.name}-{loop}-{concurrency or rate}-{encoding}.json",
                args,
                concurrency=concurrency,
                rate=rate,
                encoding=encoding,
            )
            cpu_s = cpu_seconds_between(cpu_before, process_tree_cpu(server.pid))
            after = scrape_counters(urls["metrics"], target.name)
            measured = server_side(before, after)
            latency = report["latency_ms"]
            frames = after["PeakNetFramesServed"] - before["PeakNetFramesServed"]  # warm-up included, as cpu_s
            rows.append(
                {
                    **label,
                    "target": target.name,
                    "workers": target.workers,
                    "batch_size": target.batch_size,
                    "delay_ms": target.delay_ms,
                    "loop": loop,
                    "concurrency": concurrency,
                    "rate_hz": rate,
                    "encoding": encoding,
                    "fps": report["fps"],
                    "rps": report["rps"],
                    "mb_per_s": report["mb_per_s"],
                    "p50_ms": latency.get("p50"),
                    "p99_ms": latency.get("p99"),
                    **measured,
                    "server_cpu_ms_per_frame": 1e3 * cpu_s / frames if frames > 0 else None,
                    "capped_fraction": (
                        (after["PeakNetCappedFrames"] - before["PeakNetCappedFrames"]) / frames if frames > 0 else None
                    ),
                    "gpu_reserved_mb": scrape_gauge_max(urls["metrics"], target.name),
                    "error_rate": report["error_rate"],
                    "fell_behind": report.get("open_loop", {}).get("fell_behind"),
                }
            )
            progress(f"  {rows[-1]['fps']:.1f} frames/s, p99 {rows[-1]['p99_ms']} ms")
            save()  # after every row: a run cut short keeps what it measured


def scaling_efficiency(rows: list[dict]) -> None:
    """Add ``fraction_of_echo`` (same GPU count and clients) and ``scaling_efficiency``
    = frames/s at N GPUs / (N x frames/s at 1 GPU) for the same target and load, in place."""
    key = lambda r: (  # noqa: E731
        r["target"],
        r["mps"],
        r.get("backend"),
        r["loop"],
        r["concurrency"],
        r["rate_hz"],
        r["encoding"],
    )
    single = {key(r): r["fps"] for r in rows if r["gpus"] == 1}
    echo = {
        (r["gpus"], r["mps"], r.get("backend"), r["concurrency"]): r["fps"]
        for r in rows
        if r["target"] == "echo" and r["loop"] == "closed" and r["encoding"] == "raw"
    }
    for row in rows:
        base = single.get(key(row))
        row["scaling_efficiency"] = row["fps"] / (row["gpus"] * base) if base and row["gpus"] > 1 else None
        ceiling = (
            echo.get((row["gpus"], row["mps"], row.get("backend"), row["concurrency"]))
            if row["encoding"] == "raw"
            else None
        )
        row["fraction_of_echo"] = row["fps"] / ceiling if ceiling else None


COLUMNS = [
    ("gpus", "GPUs"),
    ("mps", "MPS"),
    ("backend", "compile backend"),
    ("target", "served"),
    ("workers", "workers"),
    ("batch_size", "batch"),
    ("delay_ms", "delay ms"),
    ("loop", "loop"),
    ("concurrency", "clients"),
    ("rate_hz", "rate Hz"),
    ("encoding", "encoding"),
    ("fps", "frames/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("server_infer_ms", "TS infer ms/req"),
    ("server_queue_ms", "TS queue ms/req"),
    ("requests_per_batch", "req/batch"),
    ("handler_ms_per_batch", "handler ms/batch"),
    ("handler_infer_ms_per_batch", "of which infer"),
    ("server_cpu_ms_per_frame", "server CPU ms/frame"),
    ("capped_fraction", "capped"),
    ("gpu_reserved_mb", "GPU reserved MB/worker"),
    ("fraction_of_echo", "÷ echo"),
    ("scaling_efficiency", "scaling eff."),
    ("error_rate", "errors"),
    ("fell_behind", "fell behind"),
]
STARTUP_COLUMNS = [
    ("gpus", "GPUs"),
    ("mps", "MPS"),
    ("backend", "compile backend"),
    ("start", "start"),
    ("target", "served"),
    ("workers", "workers"),
    ("first_ready_s", "first worker READY s"),
    ("all_ready_s", "all READY s"),
    ("handler_s", "handler start-up s"),
    ("warmup_s", "of which warm-up s"),
    ("cache", "compile cache"),
]


def startup_table(startups: list[dict]) -> str:
    """The start-up rows with each target's handler figures as ranges over its workers."""

    def span(values: list) -> str | None:
        if not values:
            return None
        low, high = min(values), max(values)
        return f"{low:.1f}" if low == high else f"{low:.1f}-{high:.1f}"

    shown = [
        {
            **row,
            "handler_s": span([h["total"] for h in row["handler"]]),
            "warmup_s": span([h["warmup"] for h in row["handler"]]),
            "cache": ",".join(sorted({h["cache"] for h in row["handler"]})) or None,
        }
        for row in startups
    ]
    return markdown_table(shown, STARTUP_COLUMNS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-config",
        type=Path,
        nargs="+",
        default=[ROOT / "model_store/peaknet/peaknet.yaml"],
        help="PeakNet YAMLs to serve (with weights)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[2],
        help="workers per GPU (per server on CPU); several values serve one target each",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        nargs="+",
        default=[1],
        help="GPU counts to measure in turn (e.g. 1 2 4); scaling efficiency vs 1",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[4],
        help="requests per TorchServe batch; several values serve one target each",
    )
    parser.add_argument(
        "--delay-ms",
        type=int,
        nargs="+",
        default=[5],
        help="TorchServe maxBatchDelay (ms); several values serve one target each",
    )
    parser.add_argument(
        "--mps",
        choices=("off", "on"),
        nargs="+",
        default=["off"],
        help="serve without and/or under NVIDIA MPS, one server each, in this order",
    )
    parser.add_argument(
        "--compile-backend",
        choices=("inductor", "aoti"),
        nargs="+",
        default=["inductor"],
        help="compile_backend of the compiled variants (PEAKNET_COMPILE_BACKEND), one series of "
        "servers each, in this order; each series' first server starts --starts times",
    )
    parser.add_argument(
        "--starts",
        type=int,
        default=1,
        help="start the first server this many times against one compile cache (the first start "
        "finds it empty unless --cache-dir holds artefacts), later ones once; load tests run "
        "on each server's last start",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="compile cache directory (PEAKNET_CACHE_DIR) kept across starts and MPS modes; "
        "default: a new empty one; 'none' switches the cache off",
    )
    parser.add_argument(
        "--encodings",
        nargs="+",
        default=["raw"],
        help="request encodings (loadtest --encoding) for closed loops on the first PeakNet target",
    )
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds for every worker to be READY")
    parser.add_argument("--logs-dir", type=Path, default=None, help="copy each server's model_log.log here")
    parser.add_argument("--skip-echo", action="store_true", help="do not serve the echo handler (TorchServe's ceiling)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--rate", type=float, default=120.0, help="open-loop rate (0 = skip)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--geometry", default="epix10k2m")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=4,
        help="load-test client processes (loadtest.py --processes; at most one per client)",
    )
    parser.add_argument("--small", action="store_true", help="tiny model, 2x64x96 frames (CPU smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/e2e.json")
    args = parser.parse_args()

    warmup_shape = (16, 352, 384)
    if args.small:
        args.model_config = [ROOT / "tests/fixtures/upstream/peaknet_tiny.yaml"]
        args.variants, args.workers, args.concurrency = "eager", [1], [2]
        args.rate, args.duration, args.warmup_s, args.geometry = 0, 3.0, 1.0, "2,64,96"
        warmup_shape = (2, 64, 96)
    if args.cache_dir is None:
        args.cache_dir = Path(tempfile.mkdtemp(prefix="peaknet-compile-cache-"))
    elif str(args.cache_dir).lower() == "none":
        args.cache_dir = None

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict] = []
    startups: list[dict] = []

    def save() -> None:
        scaling_efficiency(rows)
        table = markdown_table(rows, COLUMNS)
        if startups:
            table += "\n\nWorker start-up (seconds from the server's start; handler figures per worker):\n\n"
            table += startup_table(startups)
        write_results(
            args.out,
            {
                "environment": environment(device),
                "settings": {
                    "workers_per_gpu": args.workers,
                    "gpus": args.gpus,
                    "batch_size": args.batch_size,
                    "delay_ms": args.delay_ms,
                    "mps": args.mps,
                    "compile_backend": args.compile_backend,
                    "starts": args.starts,
                    "geometry": args.geometry,
                    "duration_s": args.duration,
                    "client_processes": args.client_processes,
                    "compile_cache": args.cache_dir is not None,
                },
                "rows": rows,
                "startups": startups,
            },
            table,
        )

    for backend in args.compile_backend:
        starts = args.starts  # each backend's first server finds its own artefacts absent (cold start)
        for gpus in args.gpus:
            for mps in args.mps:
                progress(
                    f"=== {gpus} GPU(s), MPS {mps}, compile backend {backend}: {args.workers} worker(s) per GPU, "
                    f"batches of {args.batch_size} ==="
                )
                serve_and_measure(args, gpus, mps == "on", starts, warmup_shape, rows, startups, save, backend)
                starts = 1  # later servers find the compile cache the first one built
    save()
    print(markdown_table(rows, COLUMNS))
    if startups:
        print(startup_table(startups))
    if rows:
        plot(rows, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
