#!/usr/bin/env python3
"""How well the work budget's start-up calibration predicts real batches: estimate vs measured time.

    python -m benchmarks.bench_budget --out benchmarks/results/budget_cpu.json
    python -m benchmarks.bench_budget --device cuda --frames 1 4 8 --out benchmarks/results/budget_h200.json
    python -m benchmarks.bench_budget --model-config tests/fixtures/upstream/peaknet_tiny.yaml \\
        --warmup-shape 2 64 96 --max-batch-panels 16 --no-mask-cap --out benchmarks/results/budget_cpu_tiny.json

Builds the server's finder (:func:`peaknet_serve.pipeline.build_finder`, warm-up included) on this
host's CPU (or ``--device``), calibrates a :class:`~peaknet_serve.serve.budget.WorkBudget` exactly as a worker does at
start-up (:func:`peaknet_serve.pipeline.calibrate_budget`), then runs batches of 1, 4, ... simulated
ePix10k2M frames (16 x 352 x 384 uint16, with peaks) through the same finder and compares the budget's
estimate with the measured wall time (median of ``--repeats``). The "one batch only" column is what a
proportional fit on the small calibration batch alone would estimate: it charges that batch's fixed
cost to every pixel.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import environment, markdown_table, progress, write_results
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.pipeline import build_finder, calibrate_budget
from peaknet_serve.resources import BUNDLED_MODEL_CONFIG
from peaknet_serve.serve.budget import WorkBudget
from peaknet_serve.sim.peaksim.frame import simulate_frame
from peaknet_serve.sim.peaksim.geometry import get_geometry


def epix_panels(frames: int, seed: int = 0) -> torch.Tensor:
    """``frames`` simulated ePix10k2M frames as one (frames * 16, 352, 384) uint16 CPU tensor."""
    rng = np.random.default_rng(seed)
    geometry = get_geometry("epix10k2m")
    return torch.from_numpy(np.concatenate([simulate_frame(geometry, rng).uint16 for _ in range(frames)]))


def wall_seconds(finder, panels: torch.Tensor, repeats: int) -> list[float]:
    """Wall seconds of each of ``repeats`` finds of ``panels``, peak table copied to the host."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        finder.find(panels).table.to_host()
        samples.append(time.perf_counter() - started)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", type=Path, default=BUNDLED_MODEL_CONFIG)
    parser.add_argument("--warmup-shape", type=int, nargs=3, default=[16, 352, 384], metavar=("P", "H", "W"))
    parser.add_argument("--max-batch-panels", type=int, default=64)
    parser.add_argument("--no-mask-cap", action="store_true", help="max_mask_fraction off (random-weight models)")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the network as the handler runs it there)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = HandlerSettings(
        config=str(args.model_config),
        warmup_shapes=(tuple(args.warmup_shape),),
        max_batch_panels=args.max_batch_panels,
        **({"max_mask_fraction": None} if args.no_mask_cap else {}),
    )
    load_before = os.getloadavg()[0]
    progress(f"building the finder, warm-up {tuple(args.warmup_shape)} ...")
    pipeline = build_finder(settings, device)
    budget = WorkBudget()
    started = time.perf_counter()
    timed = calibrate_budget(budget, pipeline.finder, settings)
    calibration_s = time.perf_counter() - started
    (small_shape, small_s) = timed[0]
    small_rate = small_s / math.prod(small_shape)
    progress(f"calibrated in {calibration_s:.1f} s: {timed}")
    rows = []
    for frames in args.frames:
        panels = epix_panels(frames).to(device)
        progress(f"{frames} ePix10k2M frame(s) {tuple(panels.shape)} ...")
        samples = wall_seconds(pipeline.finder, panels, args.repeats)
        measured = statistics.median(samples)
        estimate = budget.estimate_s(panels.numel())
        rows.append(
            {
                "frames": frames,
                "panels": list(panels.shape),
                "estimate_s": estimate,
                "measured_s": measured,
                "measured_min_s": min(samples),
                "measured_max_s": max(samples),
                "estimate_over_measured": estimate / measured,
                "one_batch_estimate_s": small_rate * panels.numel(),
            }
        )
    load = [load_before, os.getloadavg()[0]]
    calibration = {
        "shapes": [list(shape) for shape, _ in timed],
        "median_s": [seconds for _, seconds in timed],
        "overhead_s": budget.overhead_s,
        "seconds_per_mpixel": 1e6 * budget.seconds_per_pixel,
        "wall_s": calibration_s,
    }
    runs = ", ".join(f"{'x'.join(map(str, shape))} in {seconds:.3g} s" for shape, seconds in timed)
    table = (
        f"Calibration ({args.model_config.name}, warm-up {'x'.join(map(str, args.warmup_shape))}, "
        f"max_batch_panels {args.max_batch_panels}, {torch.get_num_threads()} torch threads): {runs} (medians of up to 3 runs) "
        f"-> {budget.overhead_s:.3g} s + {calibration['seconds_per_mpixel']:.3g} s per Mpixel; "
        f"calibration took {calibration_s:.1f} s. Host load average (1 min) {load[0]:.1f} before, "
        f"{load[1]:.1f} after, on {os.cpu_count()} cores.\n\n"
    ) + markdown_table(
        rows,
        [
            ("frames", "ePix10k2M frames"),
            ("panels", "panels (B, H, W)"),
            ("estimate_s", "budget estimate s"),
            ("measured_s", "measured s (median)"),
            ("measured_min_s", "min"),
            ("measured_max_s", "max"),
            ("estimate_over_measured", "estimate / measured"),
            ("one_batch_estimate_s", "one batch only s"),
        ],
    )
    print(table)
    payload = {
        "environment": environment(device),
        "model_config": str(args.model_config),
        "settings": {"warmup_shape": args.warmup_shape, "max_batch_panels": args.max_batch_panels},
        "calibration": calibration,
        "load_average_1min": load,
        "rows": rows,
    }
    write_results(args.out, payload, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
