#!/usr/bin/env python3
"""Worker start-up with a compiled network: torch.compile with its compile cache vs AOTInductor packages.

    python -m benchmarks.bench_startup --out benchmarks/results/startup_aoti_cpu.json
    python -m benchmarks.bench_startup --model-config tests/fixtures/upstream/peaknet_tiny.yaml \\
        --shape 2 64 96 --out /tmp/startup_tiny.json

Each start is a fresh process that builds the server's finder
(:func:`peaknet_serve.pipeline.build_finder`) with the network compiled (``compile: default``, float32
on the CPU unless ``--device cuda``) at one warm-up shape and one micro-batch bucket of ``panels``.
Per backend (``compile_backend: inductor`` = torch.compile, ``aoti`` = AOTInductor packages) a
*cold* start finds an empty compile cache and builds it, and a *warm* start finds what the cold one
left, as a worker restarted on a host that has served once does (Inductor's own cache directory is
kept across the two starts too, as on a host). Reported per start: the handler's start-up seconds
and its phases (load, tune, warm-up: the first call of every bucket), what the cache did, and for AOT
packages the package's build, load and first-call seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.timing import environment, markdown_table, progress, write_results
from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.pipeline import build_finder
from peaknet_serve.resources import BUNDLED_MODEL_CONFIG

BACKENDS = ("inductor", "aoti")
ROOT = Path(__file__).resolve().parents[1]


def start_once(args: argparse.Namespace) -> dict:
    """One worker start in this process: build_finder's start-up figures as JSON-able values."""
    device = torch.device(args.device)
    panels, height, width = args.shape
    settings = HandlerSettings(
        config=str(args.model_config),
        max_batch_panels=panels,
        warmup_shapes=((panels, height, width),),
        compile=True,
        compile_backend=args.backend,
        compile_cache_dir=str(args.cache_dir),
        depthwise_padding=False,
    )
    mode = ServingMode(dtype=torch.float32, compile="default") if device.type == "cpu" else None
    pipeline = build_finder(settings, device, mode=mode)
    return {
        "startup_s": pipeline.startup_s,
        **{f"{name.replace('-', '')}_s": seconds for name, seconds in pipeline.phases.items()},
        "cache": pipeline.compile_cache,
        "packages": pipeline.packages,
    }


def run_start(args: argparse.Namespace, backend: str, cache_dir: Path, inductor_dir: Path) -> dict:
    """A start in a fresh process; its figures plus the process's wall seconds (imports included)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_startup",
        "--child",
        "--backend",
        backend,
        "--cache-dir",
        str(cache_dir),
        "--model-config",
        str(args.model_config),
        "--device",
        args.device,
        "--shape",
        *map(str, args.shape),
    ]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"start failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": wall, "log": done.stderr[-2000:]}


def flatten(row: dict) -> dict:
    """A table row: the package figures summed over packages (one here: one bucket)."""
    packages = row["packages"]

    def total(key: str) -> float | None:
        values = [p[key] for p in packages if p[key] is not None]
        return sum(values) if values else None

    return {
        **row,
        "build_s": total("build_s"),
        "package_load_s": total("load_s"),
        "first_call_s": total("first_call_s"),
    }


COLUMNS = [
    ("backend", "backend"),
    ("start", "start"),
    ("cache", "cache"),
    ("process_s", "process s (imports incl.)"),
    ("startup_s", "start-up s"),
    ("load_s", "load s"),
    ("tune_s", "tune + packages s"),
    ("warmup_s", "warm-up s"),
    ("build_s", "package build s"),
    ("package_load_s", "package load s"),
    ("first_call_s", "package first call s"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", type=Path, default=BUNDLED_MODEL_CONFIG)
    parser.add_argument("--shape", type=int, nargs=3, default=[2, 128, 128], metavar=("PANELS", "H", "W"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(start_once(args)))
        return 0
    if args.out is None:
        parser.error("--out is required")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_startup.") as work:
        for backend in args.backends:
            cache_dir, inductor_dir = Path(work) / backend / "cache", Path(work) / backend / "inductor"
            for start in ("cold", "warm"):
                progress(f"{backend}, {start} start ...")
                row = {"backend": backend, "start": start, **run_start(args, backend, cache_dir, inductor_dir)}
                progress(f"  start-up {row['startup_s']:.1f} s, cache {row['cache']}")
                rows.append(flatten(row))
    table_rows = [{k: v for k, v in row.items() if k != "log"} for row in rows]
    shown = args.model_config.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    table = (
        f"Model `{shown}`, one bucket of {args.shape[0]} panels of "
        f"{args.shape[1]} x {args.shape[2]}, {args.device}.\n\n" + markdown_table(table_rows, COLUMNS)
    )
    payload = {
        "environment": environment(torch.device(args.device)),
        "model_config": str(shown),
        "shape": args.shape,
        "rows": table_rows,
    }
    write_results(args.out, payload, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
