#!/usr/bin/env python3
"""What a CPU-only host can expect: CPU time per detector frame for the served pipeline.

    python -m benchmarks.bench_cpu --out benchmarks/results/cpu.json
    python -m benchmarks.bench_cpu --geometries epix10k2m --threads 1 2 --out /tmp/cpu.json

Runs the server's own finder (:func:`peaknet_serve.pipeline.build_finder`, float32 on the CPU) on one
simulated uint16 frame per geometry and reports the process CPU time per frame (median of
``--repeats`` after one warm-up run) for each torch thread count. CPU time, unlike wall time, does
not grow when other processes share the cores, so the figure carries over: on an otherwise idle
host with ``t`` cores for the worker, expect roughly ``cpu_s / t`` seconds per frame at best.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import environment, markdown_table, progress, write_results
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.pipeline import build_finder
from peaknet_serve.resources import BUNDLED_MODEL_CONFIG
from peaknet_serve.sim.peaksim.frame import simulate_frame
from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, get_geometry


def cpu_seconds(run, repeats: int) -> list[float]:
    """Process CPU seconds of each of ``repeats`` calls of ``run`` (after one untimed call)."""
    run()
    samples = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        samples.append(time.process_time() - started)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", type=Path, default=BUNDLED_MODEL_CONFIG)
    parser.add_argument("--geometries", nargs="+", default=sorted(GEOMETRIES), choices=sorted(GEOMETRIES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    pipeline = build_finder(HandlerSettings(config=str(args.model_config), warmup=False), device)
    rows = []
    for name in args.geometries:
        frame = simulate_frame(get_geometry(name), np.random.default_rng(0)).uint16
        panels = torch.from_numpy(frame)
        for threads in args.threads:
            torch.set_num_threads(threads)
            progress(f"{name} {tuple(frame.shape)}, {threads} thread(s) ...")
            samples = cpu_seconds(lambda panels=panels: pipeline.finder.find(panels), args.repeats)
            rows.append(
                {
                    "geometry": name,
                    "frame": list(frame.shape),
                    "threads": threads,
                    "cpu_s": statistics.median(samples),
                    "cpu_s_min": min(samples),
                    "cpu_s_max": max(samples),
                }
            )
    table = markdown_table(
        rows,
        [
            ("geometry", "detector"),
            ("frame", "frame (P, H, W)"),
            ("threads", "torch threads"),
            ("cpu_s", "CPU s per frame"),
            ("cpu_s_min", "min"),
            ("cpu_s_max", "max"),
        ],
    )
    print(table)
    write_results(
        args.out, {"environment": environment(device), "model_config": str(args.model_config), "rows": rows}, table
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
