#!/usr/bin/env python3
"""Handler-level benchmark: detector bytes -> decode -> H2D -> infer -> peaks -> JSON, per stage.

    python -m benchmarks.bench_handler --device cuda --out benchmarks/results/handler_h200.json
    python -m benchmarks.bench_handler --device cpu --small --out /tmp/handler_cpu.json

Runs the handler's own pieces (no TorchServe) on ePix10k2M frames sent as raw uint16 or float32
bytes, for several serving variants measured in the same run:

  baseline      float32 weights + autocast bf16, full 2-class logits (the public pipeline's way)
  bf16-eager    bf16 weights, class-difference head, eager
  bf16-compile  bf16 weights, class-difference head, torch.compile on static micro-batch buckets
  bf16-compile-pure  bf16-compile without autocast: every op in bf16 (``autocast: false``)
Each stage is timed separately (synchronising the device between stages), and the whole path
again without intermediate syncs, as frames/s: once uploading everything first (``total``), once
uploading micro-batch by micro-batch on a side stream overlapping compute (``total_overlap``,
the handler's ``h2d_overlap``; it differs only when a call holds more than one micro-batch of
64 panels, i.e. more than 4 ePix10k2M frames). Peak lists of each variant are compared with the
float32 eager ones (fraction of peaks matched within 1 px).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import (
    add_run_arguments,
    environment,
    markdown_table,
    plot_rows,
    progress,
    replot,
    time_ms,
    write_results,
)
from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.decode import DecodeLimits, decode_request
from peaknet_serve.device.finder import PanelPeakFinder
from peaknet_serve.device.peaks import peaks_to_frames
from peaknet_serve.device.transfer import PanelSource, upload_panels
from peaknet_serve.encode.response import json_response
from peaknet_serve.pipeline import build_finder, load_network

ROOT = Path(__file__).resolve().parents[1]


def simulated_frames(frames: int, panels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(frames, panels, H, W) uint16 ePix10k2M frames from the project's simulator (cropped if smaller)."""
    from peaknet_serve.sim.peaksim.frame import simulate_frame  # noqa: PLC0415 - only the benchmarks need the simulator
    from peaknet_serve.sim.peaksim.geometry import get_geometry  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    geometry = get_geometry("epix10k2m")
    stack = [simulate_frame(geometry, rng).uint16[:panels, :height, :width] for _ in range(frames)]
    return np.ascontiguousarray(np.stack(stack))


#: Serving modes of the variants on a GPU (on the CPU each runs in float32, eager, as the server would).
VARIANT_MODES = {
    "fp32-eager": ServingMode(torch.float32),
    "bf16-eager": ServingMode(torch.bfloat16, autocast=torch.bfloat16),
    "bf16-compile": ServingMode(
        torch.bfloat16, autocast=torch.bfloat16, compile="default", channels_last=True, depthwise_padding=True
    ),
    "bf16-compile-pure": ServingMode(torch.bfloat16, compile="default", channels_last=True, depthwise_padding=True),
}


def make_finder(model_config: Path, variant: str, device: torch.device, buckets: tuple[int, ...]) -> PanelPeakFinder:
    """The variant's finder, built by the server's own :func:`~peaknet_serve.pipeline.build_finder`
    (``baseline``: the public pipeline's full-logits forward instead of the peak-score head)."""
    # the compiled variants measure torch.compile, not the AOT packages that compile_backend: auto
    # builds on a GPU host with a C++ compiler
    settings = HandlerSettings(
        config=str(model_config), panel_buckets=buckets, warmup=False, compile_backend="inductor"
    )
    if variant == "baseline":
        model = load_network(model_config, None, ServingMode(torch.float32), device)
        return PanelPeakFinder(model, dtype=torch.float32, device=device, forward=lambda x: _logit_difference(model, x))
    mode = VARIANT_MODES[variant] if device.type == "cuda" else ServingMode(torch.float32)
    return build_finder(settings, device, mode=mode).finder


def _logit_difference(model, x: torch.Tensor) -> torch.Tensor:
    """Baseline head: full-resolution 2-class logits, then their difference (B, 1, H, W)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        logits = model(x)
    return (logits[:, 1:2] - logits[:, 0:1]).float()


def run_case(
    finder: PanelPeakFinder, body: bytes, options: dict[str, str], device: torch.device, warmup: int, repeats: int
) -> dict:
    limits = DecodeLimits(max_frames=64, max_pixels=64 * 16 * 352 * 384, max_body_bytes=2**31)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    decoded = decode_request(body, "application/octet-stream", options, limits)
    n, p, h, w = decoded.array.shape
    panels = upload_panels([decoded.array], device)
    result = finder.find(panels)
    host = result.table.to_host()

    def decode():
        return decode_request(body, "application/octet-stream", options, limits)

    def h2d():
        upload_panels([decoded.array], device)
        sync()

    def infer():
        finder.find(panels).table.ss.sum()
        sync()

    def answer(table) -> str:
        frames = peaks_to_frames(table.to_host(), n, p)
        return json.dumps(
            json_response(model="m", precision="p", device="d", shape=(n, p, h, w), dtype="uint16", frames=frames)
        )

    def postprocess():
        answer(result.table)

    def whole():
        answer(finder.find(upload_panels([decode().array], device)).table)

    def whole_overlap():
        answer(finder.find_pipelined(PanelSource([decode().array])).table)

    stages = {
        name: time_ms(fn, device, warmup, repeats)["median_ms"]
        for name, fn in [
            ("decode", decode),
            ("h2d", h2d),
            ("infer", infer),
            ("postprocess", postprocess),
            ("total", whole),
            ("total_overlap", whole_overlap),
        ]
    }
    stages["frames_per_s"] = n * 1e3 / stages["total"]
    stages["frames_per_s_overlap"] = n * 1e3 / stages["total_overlap"]
    stages["peaks"] = int(len(host))
    return stages, host


def matched_fraction(a, b, radius: float = 1.0) -> float:
    """Fraction of peaks in ``b`` that have a peak of ``a`` on the same panel within ``radius`` px."""
    if len(b) == 0:
        return 1.0 if len(a) == 0 else 0.0
    hits = 0
    for i in range(len(b)):
        same = a.image_index == b.image_index[i]
        d2 = (a.ss[same] - b.ss[i]) ** 2 + (a.fs[same] - b.fs[i]) ** 2
        hits += bool(d2.size and d2.min() <= radius**2)
    return hits / len(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-config", type=Path, default=ROOT / "model_store/peaknet/peaknet.yaml")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--variants", default="baseline,bf16-eager,bf16-compile")
    parser.add_argument("--small", action="store_true", help="2 frames of 2x64x96 panels (CPU smoke run)")
    add_run_arguments(parser, ROOT / "benchmarks/results/handler.json")
    args = parser.parse_args()
    if replot(args, plot):
        return 0

    device = torch.device(args.device)
    panels, height, width = (2, 64, 96) if args.small else (16, 352, 384)
    if args.small:
        args.frames, args.warmup, args.repeats = [1, 2], 1, 3
    variants = [v for v in args.variants.split(",") if device.type == "cuda" or not v.startswith("bf16-compile")]
    buckets = tuple(sorted({f * panels for f in args.frames}))
    rows = []
    reference = {}
    for variant in ["fp32-eager", *variants]:
        progress(f"variant {variant} ...")
        finder = make_finder(args.model_config, variant, device, buckets)
        for n in args.frames:
            frames = simulated_frames(n, panels, height, width, seed=n)
            for wire in ("uint16", "float32"):
                body = frames.astype(wire).tobytes()
                options = {"x-dtype": wire, "x-shape": f"{n},{panels},{height},{width}"}
                stages, host = run_case(finder, body, options, device, args.warmup, args.repeats)
                if variant == "fp32-eager":
                    reference[(n, wire)] = host
                    continue
                rows.append(
                    {
                        "variant": variant,
                        "frames": n,
                        "wire": wire,
                        **stages,
                        "peaks_matched_vs_fp32": matched_fraction(host, reference[(n, wire)]),
                    }
                )
                progress(f"  {n} frame(s) {wire}: {stages['frames_per_s']:.1f} frames/s")
    base = {(r["frames"], r["wire"]): r["total"] for r in rows if r["variant"] == "baseline"}
    for row in rows:
        row["speedup_vs_baseline"] = base.get((row["frames"], row["wire"]), float("nan")) / row["total"]
    columns = [
        ("variant", "variant"),
        ("frames", "frames/req"),
        ("wire", "wire dtype"),
        ("decode", "decode ms"),
        ("h2d", "H2D ms"),
        ("infer", "infer ms"),
        ("postprocess", "post ms"),
        ("total", "total ms"),
        ("frames_per_s", "frames/s"),
        ("total_overlap", "total ms, H2D overlap"),
        ("frames_per_s_overlap", "frames/s, H2D overlap"),
        ("speedup_vs_baseline", "× baseline"),
        ("peaks", "peaks"),
        ("peaks_matched_vs_fp32", "peaks = fp32"),
    ]
    table = markdown_table(rows, columns)
    print(table)
    write_results(
        args.out, {"environment": environment(device), "model_config": str(args.model_config), "rows": rows}, table
    )
    plot(rows, args.out.with_suffix(".png"))
    return 0


def plot(rows: list[dict], path: Path) -> None:
    """Frames/s per variant, one group per (frames per call, wire dtype)."""
    plot_rows(
        rows,
        path,
        group=lambda r: f"{r['frames']} frame(s)\n{r['wire']}",
        series=lambda r: r["variant"],
        value="frames_per_s",
        ylabel="frames/s (decode + H2D + infer + peaks + JSON)",
        title="Handler path",
        reference=120.0,
    )


if __name__ == "__main__":
    raise SystemExit(main())
