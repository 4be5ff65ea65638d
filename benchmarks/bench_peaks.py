#!/usr/bin/env python3
"""Peak extraction's cost per mask: is a batch with any mask, even all ones, close to a typical one?

    python -m benchmarks.bench_peaks --device cuda --out benchmarks/results/peaks_h200.json
    python -m benchmarks.bench_peaks --device cpu --frames 1 --repeats 3 --out /tmp/peaks_cpu.json

One batch of ``--frames`` simulated ePix10k2M frames (``--geometry``) (16 panels of 352 x 384 each). The *typical*
mask is what the bundled trained model marks on them; the others are the mask of random-weight 33M
PeakNet (``--dense-model``, if given), speckle at several fractions of the pixels (independent pixels:
the most components per marked pixel), serpentines (one component per panel, as long as its rows allow) and
all ones. Each is labelled and measured (:func:`~peaknet_serve.device.peaks.find_peaks`) unbounded
and with the server's default :class:`~peaknet_serve.device.peaks.LabelLimits`, medians over
repeats, CUDA events on a GPU.

``--network-ms`` is the network's time for the same batch (the e2e benchmark's handler figure, or
``bench_model``'s); with it each row also gives the batch's cost relative to the typical mask's,
``(network + peaks(mask)) / (network + peaks(typical))``: the bound is met where that is <= 1.2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import (
    add_run_arguments,
    environment,
    markdown_table,
    plot_rows,
    progress,
    time_ms,
    write_results,
)
from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.clients.payloads import detector_frames, geometry_from_name
from peaknet_serve.device.peaks import UNBOUNDED, LabelLimits, bounded_components, find_peaks, peak_mask_from_score
from peaknet_serve.device.preprocess import network_input, sanitize
from peaknet_serve.resources import BUNDLED_MODEL_CONFIG

DEFAULT_LIMITS = LabelLimits()


@torch.inference_mode()
def model_mask(config: Path, panels: torch.Tensor) -> torch.Tensor:
    """bool (B, H, W): the mask ``config``'s model (float32, eager) marks on sanitised ``panels``."""
    model = load_peaknet(config, dtype="float32", device=panels.device)
    masks = [
        peak_mask_from_score(model.forward_peak_score(network_input(chunk, torch.float32)))
        for chunk in panels.split(16)
    ]
    return torch.cat(masks)


def serpentine(shape: tuple[int, int, int], device: torch.device, spacing: int = 2) -> torch.Tensor:
    """Every ``spacing``-th row of each panel, joined to the next at alternate ends: one component per
    panel marking about ``1 / spacing`` of it, as long a path as the rows allow (what labelling takes
    longest to settle)."""
    batch, height, width = shape
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    mask[:, ::spacing, :] = True
    for index, row in enumerate(range(0, height - spacing, spacing)):
        mask[:, row : row + spacing + 1, width - 1 if index % 2 == 0 else 0] = True
    return mask


def masks(panels: torch.Tensor, dense_model: Path | None, fractions: list[float], seed: int) -> dict[str, torch.Tensor]:
    shape = tuple(panels.shape)
    generator = torch.Generator(device=panels.device).manual_seed(seed)
    found = {"typical (bundled model)": model_mask(BUNDLED_MODEL_CONFIG, panels)}
    if dense_model is not None:
        found["random-weight 33M"] = model_mask(dense_model, panels)
    for fraction in fractions:
        found[f"speckle {fraction:.1%}"] = torch.rand(shape, generator=generator, device=panels.device) < fraction
    for spacing in (5, 2):
        found[f"serpentine 1/{spacing}"] = serpentine(shape, panels.device, spacing)
    found["all ones"] = torch.ones(shape, dtype=torch.bool, device=panels.device)
    return found


def measure(mask: torch.Tensor, image: torch.Tensor, limits: LabelLimits, args) -> dict:
    def run():
        return find_peaks(mask, image, components=bounded_components(mask, limits))

    components = bounded_components(mask, limits)
    table = find_peaks(mask, image, components=components)
    timing = time_ms(run, image.device, args.warmup, args.repeats)
    return {
        "peaks_ms": timing["median_ms"],
        "peaks_ms_min": timing["min_ms"],
        "peaks_ms_max": timing["max_ms"],
        "peaks": len(table),
        "capped_panels": int(components.capped.sum()),
    }


COLUMNS = [
    ("mask", "mask"),
    ("mask_fraction", "marked"),
    ("limits", "limits"),
    ("peaks", "peaks"),
    ("capped_panels", "capped panels"),
    ("peaks_ms", "peaks ms"),
    ("vs_typical", "÷ typical peaks"),
    ("batch_ratio", "batch ÷ typical batch"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=4, help="ePix10k2M frames in the batch (16 panels each)")
    parser.add_argument("--dense-model", type=Path, default=None, help="random-weight PeakNet YAML (dense masks)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.1, 0.24])
    parser.add_argument("--network-ms", type=float, default=None, help="the network's ms for this batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--geometry", default="epix10k2m", help="detector (payloads geometry name or P,H,W)")
    parser.add_argument(
        "--small", action="store_true", help="2 frames of 2 x 64 x 96 panels, 2 repeats (CPU smoke run)"
    )
    add_run_arguments(parser, Path("benchmarks/results/peaks.json"))
    args = parser.parse_args()
    if args.small:
        args.geometry, args.frames, args.warmup, args.repeats = "2,64,96", 2, 1, 2
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)

    frames = detector_frames(geometry_from_name(args.geometry), args.frames, "uint16", seed=args.seed)
    raw = torch.from_numpy(frames.reshape(-1, *frames.shape[-2:]).astype(np.float32)).to(device)
    image, _ = sanitize(raw)
    rows = []
    typical_ms: dict[str, float] = {}
    for name, mask in masks(image, args.dense_model, args.fractions, args.seed).items():
        capped_name = f"cap {DEFAULT_LIMITS.max_panel_fraction:.0%}, {DEFAULT_LIMITS.max_iterations} iterations"
        for limits_name, limits in (("none", UNBOUNDED), (capped_name, DEFAULT_LIMITS)):
            progress(f"{name}, limits {limits_name} ...")
            row = {
                "mask": name,
                "mask_fraction": mask.float().mean().item(),
                "limits": limits_name,
                **measure(mask, image, limits, args),
            }
            typical_ms.setdefault(limits_name, row["peaks_ms"])  # the first mask is the typical one
            row["vs_typical"] = row["peaks_ms"] / typical_ms[limits_name]
            if args.network_ms is not None:
                row["batch_ratio"] = (args.network_ms + row["peaks_ms"]) / (args.network_ms + typical_ms[limits_name])
            rows.append(row)
    settings = {
        "geometry": args.geometry,
        "frames": args.frames,
        "panels": int(image.shape[0]),
        "network_ms": args.network_ms,
        "limits": {
            "max_panel_fraction": DEFAULT_LIMITS.max_panel_fraction,
            "max_iterations": DEFAULT_LIMITS.max_iterations,
        },
    }
    write_results(
        args.out,
        {"environment": environment(device), "settings": settings, "rows": rows},
        markdown_table(rows, COLUMNS),
    )
    plot_rows(
        rows,
        args.out.with_suffix(".png"),
        group=lambda r: r["mask"],
        series=lambda r: f"limits {r['limits']}",
        value="peaks_ms",
        ylabel="ms per batch (median)",
        log=True,
        title=f"peak extraction, {args.frames} {args.geometry} frames ({device.type})",
    )
    print(markdown_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
