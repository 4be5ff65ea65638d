#!/usr/bin/env python3
"""Model-level benchmark: PeakNet under each precision mode, all in one run, ratios vs autocast.

    # H200, the public 33M and 673M configs, ePix10k2M frames and 1920x1920 images:
    python -m benchmarks.bench_model --device cuda --out benchmarks/results/model_h200.json
    # CPU smoke run at small size:
    python -m benchmarks.bench_model --device cpu --small --out /tmp/model_cpu.json

Modes (weights / autocast / output):
  fp32          float32 weights, no autocast, full (B, 2, H, W) logits
  autocast      float32 weights + autocast bf16: the public pipeline's approach (baseline "b")
  bf16, fp16    weights and inputs cast, under autocast
  lean          bf16 + channels_last + class-difference head at stride 4 (B, 1, H, W), eager
  fast          lean + torch.compile(dynamic=False), dynamo reset per shape
  fast_graphs   fast with mode="reduce-overhead" (CUDA graphs)
  fast_pure     fast without autocast: every op in bf16 (autocast returns float32 from
                layer_norm/group_norm, so the BiFPN and head activations stay float32 under it)
  lean_pure     lean without autocast, eager
  fast_autotune fast with mode="max-autotune-no-cudagraphs" (Inductor benchmarks Triton GEMM and
                convolution templates against cuDNN/cuBLAS per shape; compiling costs minutes)
  fast_pure_public_head  fast_pure with the segmentation head in the public PeakNet's order (every
                lateral branch upsampled to stride 4, then summed) instead of the default (coarse
                branches summed and projected at stride 8, :mod:`peaknet_serve.model.seg_head`):
                the baseline of that reordering, equal up to rounding
  fast_pure_unmerged  fast_pure with the BiFPN's 1x1 depthwise convs run as convs instead of merged
                into their pointwise convs (every lean mode merges them, as the server does on CUDA)
  fast_pure_unpadded  fast_pure without the depthwise-padding tuning that every lean mode runs
                on CUDA before compiling (:mod:`peaknet_serve.model.depthwise`; the handler's
                ``depthwise_padding``): the tuning's ablation
  fast_fp8      fast with the ConvNeXt V2 MLP linears as float8 e4m3 GEMMs, rowwise scales
                (:mod:`peaknet_serve.model.float8`; CUDA, compute capability >= 8.9): an experiment,
                not a serving option (on the H200 slower than fast and below 99% mask agreement,
                ``benchmarks/results/model_fp8_h200.md``)
Per mode: median latency over repeats (CUDA events), items/s, peak and weight memory (parameters
and buffers: float8 weights are buffers), and the peak-mask agreement with the mask of the first
mode run (fp32 in the default list: the argmax of fp32 logits).

Peak memory is the steady state of inference: after the warm-up runs (which compile), the cache
is emptied and the peak counters reset, then the timed runs set the peak. Compile-time buffers
(autotuning clones) are reported apart (``warmup_peak_reserved_gib``); memory that outlives the
warm-up, such as a CUDA-graph pool, stays reserved and so counts in the steady-state figures.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.config.mode import ServingMode
from peaknet_serve.model.depthwise import PaddableDepthwiseConv2d, tune_depthwise_padding
from peaknet_serve.model.float8 import Float8Linear, convert_pointwise_to_float8
from peaknet_serve.model.peaknet import PeakNet
from peaknet_serve.pipeline import load_network, network_forward

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mode:
    """A benchmark mode: a :class:`ServingMode` and the head it runs (``lean``: the (B, 1, H, W) peak
    score the server runs, else the full (B, 2, H, W) logits of the public pipeline); ``float8``:
    the ConvNeXt V2 MLP linears converted to float8 after loading
    (:func:`~peaknet_serve.model.float8.convert_pointwise_to_float8`); ``public_head_order``: the
    segmentation head upsamples every lateral branch before summing them, as the public PeakNet
    does (``PeakNet.sum_before_upsample = False``), the baseline of the default order."""

    name: str
    serving: ServingMode
    lean: bool = False
    float8: bool = False
    public_head_order: bool = False

    @property
    def compile(self) -> str | None:
        return self.serving.compile


def _mode(
    name: str,
    weights: torch.dtype,
    autocast: torch.dtype | None,
    lean: bool = False,
    compile: str | None = None,
    pad_depthwise: bool = False,
    float8: bool = False,
    public_head_order: bool = False,
    merge_separable: bool = True,
) -> Mode:
    serving = ServingMode(
        weights,
        autocast,
        compile,
        channels_last=lean,
        depthwise_padding=pad_depthwise,
        merge_separable=lean and merge_separable,
    )
    return Mode(name, serving, lean, float8, public_head_order)


MODES = {
    "fp32": _mode("fp32", torch.float32, None),
    "autocast": _mode("autocast", torch.float32, torch.bfloat16),
    "bf16": _mode("bf16", torch.bfloat16, torch.bfloat16),
    "fp16": _mode("fp16", torch.float16, torch.float16),
    "lean": _mode("lean", torch.bfloat16, torch.bfloat16, lean=True, pad_depthwise=True),
    "fast": _mode("fast", torch.bfloat16, torch.bfloat16, lean=True, compile="default", pad_depthwise=True),
    "fast_fp8": _mode(
        "fast_fp8", torch.bfloat16, torch.bfloat16, lean=True, compile="default", pad_depthwise=True, float8=True
    ),
    "fast_graphs": _mode(
        "fast_graphs", torch.bfloat16, torch.bfloat16, lean=True, compile="reduce-overhead", pad_depthwise=True
    ),
    "fast_pure": _mode("fast_pure", torch.bfloat16, None, lean=True, compile="default", pad_depthwise=True),
    "fast_pure_public_head": _mode(
        "fast_pure_public_head",
        torch.bfloat16,
        None,
        lean=True,
        compile="default",
        pad_depthwise=True,
        public_head_order=True,
    ),
    "fast_pure_unmerged": _mode(
        "fast_pure_unmerged",
        torch.bfloat16,
        None,
        lean=True,
        compile="default",
        pad_depthwise=True,
        merge_separable=False,
    ),
    "fast_pure_unpadded": _mode("fast_pure_unpadded", torch.bfloat16, None, lean=True, compile="default"),
    "lean_pure": _mode("lean_pure", torch.bfloat16, None, lean=True, pad_depthwise=True),
    "fast_autotune": _mode(
        "fast_autotune",
        torch.bfloat16,
        torch.bfloat16,
        lean=True,
        compile="max-autotune-no-cudagraphs",
        pad_depthwise=True,
    ),
}

DEFAULT_MODES = "fp32,autocast,bf16,fp16,lean,lean_pure,fast,fast_pure,fast_graphs"


def forward_fn(model: PeakNet, mode: Mode, x: torch.Tensor, device: torch.device) -> Callable[[], torch.Tensor]:
    """A no-argument callable running one batch in ``mode``; returns the peak mask (B, H, W) bool."""
    if mode.compile:
        torch._dynamo.reset()
    head = network_forward(model, mode.serving, "score" if mode.lean else "logits")
    autocast = mode.serving.autocast

    def run() -> torch.Tensor:
        with (
            torch.inference_mode(),
            torch.autocast(
                device.type, dtype=autocast or torch.float32, enabled=autocast is not None and device.type == "cuda"
            ),
        ):
            out = head(x)
            return out[:, 0] > 0 if mode.lean else out.argmax(dim=1) == 1

    return run


def prepare_mode(config: Path, mode: Mode, base: torch.Tensor, device: torch.device):
    """``(model, x, run)`` for ``mode``: the config's random weights (seed 0, the same in every
    mode, so masks are comparable) loaded by the server's :func:`~peaknet_serve.pipeline.load_network`
    in the mode's dtype and memory format (its MLP linears then converted to float8 for a ``float8``
    mode), ``base`` cast alike, the depthwise padding tuned as the server tunes it (CUDA), and
    :func:`forward_fn`'s callable."""
    torch.manual_seed(0)
    serving = mode.serving
    model = load_network(config, None, serving, device, random_init=True)
    model.sum_before_upsample = not mode.public_head_order
    if mode.float8:
        convert_pointwise_to_float8(model)  # after the cast: a later .to(dtype) would cast float8 weights
    x = base.to(device=device, dtype=serving.dtype)
    if serving.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if serving.depthwise_padding and device.type == "cuda":

        def features() -> None:
            with torch.autocast("cuda", dtype=serving.autocast or torch.float32, enabled=serving.autocast is not None):
                model.forward_features(x)

        tune_depthwise_padding(model, features)
    return model, x, forward_fn(model, mode, x, device)


def depthwise_padded_sizes(model: nn.Module) -> list[list[int]]:
    """``[H, W, H', W']`` for every input size the model's depthwise convs compute padded."""
    sizes = {
        (*size, *target)
        for m in model.modules()
        if isinstance(m, PaddableDepthwiseConv2d)
        for size, target in m.compute_sizes.items()
    }
    return [list(entry) for entry in sorted(sizes)]


def bench_case(
    config: Path, shape: tuple[int, ...], modes: list[str], device: torch.device, warmup: int, repeats: int
) -> list[dict]:
    rows, reference_mask = [], None
    generator = torch.Generator(device="cpu").manual_seed(0)
    base = torch.randn(shape, generator=generator)
    for name in modes:
        mode = MODES[name]
        if mode.compile and device.type != "cuda":
            continue
        if mode.compile == "reduce-overhead" and shape[-1] * shape[-2] > 1024 * 1024:
            continue  # CUDA graphs pay where launch overhead matters: detector panels, not 1920^2 images
        progress(f"  {config.stem} {tuple(shape)} {name} ...")
        model, x, run = prepare_mode(config, mode, base, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup + (2 if mode.compile else 0)):
            run()
        warmup_reserved = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            warmup_reserved = torch.cuda.max_memory_reserved(device) / 2**30
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        timing = time_ms(run, device, warmup=0, repeats=repeats)
        mask = run().cpu()
        if reference_mask is None:
            reference_mask = mask
        weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        rows.append(
            {
                "model": config.stem,
                "shape": list(shape),
                "mode": name,
                "ms": timing["median_ms"],
                "min_ms": timing["min_ms"],
                "max_ms": timing["max_ms"],
                "items_per_s": shape[0] * 1e3 / timing["median_ms"],
                "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None,
                "warmup_peak_reserved_gib": warmup_reserved,
                "weights_gib": weight_bytes / 2**30,
                "mask_agreement_vs_fp32": float((mask == reference_mask).float().mean()),
                "depthwise_padded": depthwise_padded_sizes(model),
                "float8_layers": sum(isinstance(m, Float8Linear) for m in model.modules()),
            }
        )
        del model, x, run
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    baseline = next((r for r in rows if r["mode"] == "autocast"), None)
    for row in rows:
        row["speedup_vs_autocast"] = baseline["ms"] / row["ms"] if baseline else None
        row["reserved_vs_autocast"] = (
            row["peak_reserved_gib"] / baseline["peak_reserved_gib"]
            if baseline and baseline.get("peak_reserved_gib")
            else None
        )
    return rows


def parse_case(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny model and inputs (CPU smoke run)")
    parser.add_argument(
        "--configs",
        nargs="+",
        type=Path,
        default=[ROOT / "configs/peaknet-33m.yaml", ROOT / "configs/peaknet-673m.yaml"],
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["16x1x352x384", "8x1x1920x1920"],
        help="input shapes BxCxHxW (the batch is halved for configs over 100M parameters)",
    )
    parser.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated, of {','.join(MODES)}")
    parser.add_argument(
        "--large-modes",
        default="fp32,autocast,bf16,fp16,lean",
        help="modes for configs over 100M parameters (compiling them costs minutes)",
    )
    add_run_arguments(parser, ROOT / "benchmarks/results/model.json")
    args = parser.parse_args()
    if replot(args, plot):
        return 0

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.small:
        args.configs = [ROOT / "tests/fixtures/upstream/peaknet_tiny.yaml"]
        args.cases = ["2x1x64x96"]
        args.warmup, args.repeats = 1, 3
    rows = []
    for config in args.configs:
        large = sum(p.numel() for p in load_peaknet(config, random_init=True).parameters()) > 100e6
        modes = (args.large_modes if large else args.modes).split(",")
        for case in args.cases:
            shape = parse_case(case)
            if large:
                shape = (max(1, shape[0] // 2), *shape[1:]) if shape[-1] > 1000 else shape
            rows += bench_case(config, shape, modes, device, args.warmup, args.repeats)
            report(rows, device, args.out)  # after every case, so a cut-short run keeps its rows
    report(rows, device, args.out, show=True)
    return 0


def report(rows: list[dict], device: torch.device, out: Path, show: bool = False) -> None:
    columns = [
        ("model", "model"),
        ("shape", "input"),
        ("mode", "mode"),
        ("ms", "ms/batch"),
        ("items_per_s", "items/s"),
        ("speedup_vs_autocast", "× autocast"),
        ("peak_gib", "peak GiB"),
        ("peak_reserved_gib", "peak reserved GiB"),
        ("reserved_vs_autocast", "reserved ÷ autocast"),
        ("weights_gib", "weights GiB"),
        ("mask_agreement_vs_fp32", "mask = fp32"),
    ]
    table = markdown_table(rows, columns)
    if show:
        print(table)
    write_results(out, {"environment": environment(device), "rows": rows}, table)
    if show:
        plot(rows, out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    """Speed-up over autocast per mode, one group per (model, input); beside it (``*_memory.png``)
    peak reserved memory over autocast's, where the run recorded it (CUDA)."""

    def group(r: dict) -> str:
        return f"{r['model']}\n{'x'.join(map(str, r['shape']))}"

    plot_rows(
        rows,
        path,
        group=group,
        series=lambda r: r["mode"],
        value="speedup_vs_autocast",
        ylabel="speed-up vs fp32 weights + autocast bf16",
        title="PeakNet model level",
        reference=1.0,
    )
    if any(r.get("reserved_vs_autocast") is not None for r in rows):
        plot_rows(
            rows,
            path.with_name(path.stem + "_memory.png"),
            group=group,
            series=lambda r: r["mode"],
            value="reserved_vs_autocast",
            ylabel="peak reserved memory ÷ autocast's",
            title="PeakNet model level: steady-state peak memory (target ≤ 0.5)",
            reference=0.5,
        )


if __name__ == "__main__":
    raise SystemExit(main())
