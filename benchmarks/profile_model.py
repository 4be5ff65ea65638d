#!/usr/bin/env python3
"""Where PeakNet's time goes: per network stage and per kernel kind, autocast baseline vs fast path.

    python -m benchmarks.profile_model --device cuda --out benchmarks/results/profile_h200.json
    python -m benchmarks.profile_model --device cpu --small --out /tmp/profile_cpu.json

For each input shape, the network is cut into its three stages and each is timed on its own
(CUDA events, median over repeats), in two modes:

  autocast  float32 weights + autocast bf16, full 2-class logits (the public pipeline's way)
  fast      bf16 weights, channels_last, separable convs merged, class-difference head, each stage
            ``torch.compile(dynamic=False)`` (the served fast path, compiled stage by stage)

Stages: ``backbone`` (ConvNeXt V2 stem + 4 stages), ``neck`` (1x1 adapters + BiFPN) and ``head``
(lateral fusion, segmentation conv, upsample). The speed-up of each stage shows which one limits
the whole. On CUDA, the whole pass is also run under ``torch.profiler``: its GPU kernel time split
into kinds (convolution, matrix multiply, Inductor-fused Triton kernels, ...), and its longest
kernels by name (``--top-kernels``).
"""

from __future__ import annotations

import argparse
import gc
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.bench_model import parse_case
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
from peaknet_serve.model.peaknet import PeakNet
from peaknet_serve.pipeline import load_network

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("backbone", "neck", "head")

# Substrings of CUDA kernel names -> kind, first match wins (names from cuDNN, cuBLAS, CUTLASS, Inductor).
# Inductor's Triton kernels come first: their names list the fused ATen ops ("..._convolution_gelu_...",
# "..._to_copy_..." for dtype conversions) and would otherwise be counted as convolutions.
KERNEL_KINDS = (
    ("triton", "fused (Inductor/Triton)"),
    ("tensortransform", "cuDNN layout transform"),
    ("depthwise", "depthwise conv"),
    ("conv2d_c1_k1", "depthwise conv"),
    ("dgrad", "convolution"),
    ("conv", "convolution"),
    ("implicit", "convolution"),
    ("xmma", "convolution"),
    ("gemm", "matrix multiply"),
    ("cutlass", "matrix multiply"),
    ("nvjet", "matrix multiply"),
    ("upsample", "upsample"),
    ("interpolat", "upsample"),
    ("reduce", "reduction"),
    ("norm", "normalisation"),
    ("copy", "copy / layout"),
    ("transpose", "copy / layout"),
    ("nchw", "copy / layout"),
    ("nhwc", "copy / layout"),
    ("elementwise", "elementwise"),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for key, kind in KERNEL_KINDS if key in lowered), "other")


def stage_functions(model: PeakNet, fast: bool) -> dict[str, Callable]:
    """The three stages as functions: (B, C, H, W) -> maps -> features -> (B, 1 or 2, H, W)."""

    def backbone(x):
        return model.backbone(x.to(model.dtype))

    def neck(maps):
        return model.bifpn([adapter(m) for adapter, m in zip(model.backbone_to_bifpn, maps)])

    def head(features):
        if fast:
            return model.forward_peak_score_head(features)
        logits = model.forward_head(features)
        return logits[:, 1:2] - logits[:, 0:1]

    return {"backbone": backbone, "neck": neck, "head": head}


def prepare(config: Path, mode: str, device: torch.device) -> tuple[PeakNet, dict[str, Callable]]:
    torch.manual_seed(0)
    fast = mode == "fast"
    # the served fast path's network, as the handler loads it (pipeline.load_network)
    serving = ServingMode(torch.bfloat16, channels_last=True, merge_separable=True) if fast else ServingMode()
    model = load_network(config, None, serving, device, random_init=True)
    stages = stage_functions(model, fast)
    if fast and device.type == "cuda":
        stages = {name: torch.compile(fn, dynamic=False) for name, fn in stages.items()}
    return model, stages


def profile_stages(
    config: Path,
    shape: tuple[int, ...],
    mode: str,
    device: torch.device,
    warmup: int,
    repeats: int,
    top_kernels: int = 0,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Time each stage on its own (inputs computed once), then the three chained; on CUDA, the
    whole pass's kernel time by kind and its ``top_kernels`` longest kernels.
    Returns ``(stage rows, kernel-kind rows, top-kernel rows)``."""
    model, stages = prepare(config, mode, device)
    x = torch.randn(shape, device=device, dtype=model.dtype)
    if mode == "fast":
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = mode == "autocast" and device.type == "cuda"
    rows = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        inputs = {"backbone": x}
        inputs["neck"] = stages["backbone"](x)
        inputs["head"] = stages["neck"](inputs["neck"])
        for name in STAGES:
            stage, stage_input = stages[name], inputs[name]
            timing = time_ms(lambda stage=stage, stage_input=stage_input: stage(stage_input), device, warmup, repeats)
            rows.append(
                {"model": config.stem, "shape": list(shape), "mode": mode, "stage": name, "ms": timing["median_ms"]}
            )
        backbone, neck, head = stages["backbone"], stages["neck"], stages["head"]

        def whole_pass(backbone=backbone, neck=neck, head=head, x=x) -> torch.Tensor:
            return head(neck(backbone(x)))

        whole = time_ms(whole_pass, device, warmup, repeats)
        rows.append(
            {"model": config.stem, "shape": list(shape), "mode": mode, "stage": "whole", "ms": whole["median_ms"]}
        )
        times = kernel_times(whole_pass, device)
    for row in rows:
        row["share"] = row["ms"] / whole["median_ms"]
    del model, stages, inputs, x, backbone, neck, head, stage, stage_input, whole_pass
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    labels = {"model": config.stem, "shape": list(shape), "mode": mode}
    kinds = [{**labels, "kind": kind, "ms": ms} for kind, ms in by_kind(times).items()]
    top = [
        {**labels, "kernel": name[:120], "kind": kernel_kind(name), "ms": ms, "calls": calls}
        for name, (ms, calls) in list(times.items())[:top_kernels]
    ]
    return rows, kinds, top


def kernel_times(fn: Callable, device: torch.device, runs: int = 3) -> dict[str, tuple[float, float]]:
    """GPU kernel time of one run of ``fn`` per kernel name: ``{name: (ms, calls)}``, means over
    ``runs`` profiled runs, largest first. Empty off CUDA."""
    if device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize(device)
    ms: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            ms[event.name] += event.device_time / 1e3 / runs  # us -> ms
            calls[event.name] += 1
    return {name: (ms[name], calls[name] / runs) for name in sorted(ms, key=lambda n: -ms[n])}


def by_kind(times: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Milliseconds per :func:`kernel_kind`, largest first."""
    totals: dict[str, float] = defaultdict(float)
    for name, (ms, _) in times.items():
        totals[kernel_kind(name)] += ms
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/peaknet-33m.yaml")
    parser.add_argument("--cases", nargs="+", default=["16x1x352x384", "8x1x1920x1920"])
    parser.add_argument("--small", action="store_true", help="tiny model and input (CPU smoke run)")
    parser.add_argument("--top-kernels", type=int, default=15, help="longest kernels listed per (input, mode)")
    add_run_arguments(parser, ROOT / "benchmarks/results/profile.json")
    args = parser.parse_args()
    if replot(args, plot):
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.small:
        args.config, args.cases = ROOT / "tests/fixtures/upstream/peaknet_tiny.yaml", ["2x1x64x96"]
        args.warmup, args.repeats = 1, 3
    rows, kinds, top = [], [], []
    for case in args.cases:
        for mode in ("autocast", "fast"):
            progress(f"{args.config.stem} {case} {mode} ...")
            stage_rows, kind_rows, top_rows = profile_stages(
                args.config, parse_case(case), mode, device, args.warmup, args.repeats, args.top_kernels
            )
            rows += stage_rows
            kinds += kind_rows
            top += top_rows
    base = {(tuple(r["shape"]), r["stage"]): r["ms"] for r in rows if r["mode"] == "autocast"}
    for row in rows:
        row["speedup_vs_autocast"] = base[(tuple(row["shape"]), row["stage"])] / row["ms"]
    table = markdown_table(
        rows,
        [
            ("model", "model"),
            ("shape", "input"),
            ("mode", "mode"),
            ("stage", "stage"),
            ("ms", "ms"),
            ("share", "share of whole"),
            ("speedup_vs_autocast", "× autocast"),
        ],
    )
    if kinds:
        table += "\n\nGPU kernel time of one pass, by kind:\n\n" + markdown_table(
            kinds, [("model", "model"), ("shape", "input"), ("mode", "mode"), ("kind", "kernel kind"), ("ms", "ms")]
        )
    if top:
        table += "\n\nLongest GPU kernels of one pass (calls per pass):\n\n" + markdown_table(
            top,
            [
                ("shape", "input"),
                ("mode", "mode"),
                ("kernel", "kernel"),
                ("kind", "kind"),
                ("calls", "calls"),
                ("ms", "ms"),
            ],
        )
    print(table)
    write_results(
        args.out,
        {
            "environment": environment(device),
            "config": str(args.config),
            "rows": rows,
            "kernel_kinds": kinds,
            "top_kernels": top,
        },
        table,
    )
    plot(rows, args.out.with_suffix(".png"))
    return 0


def plot(rows: list[dict], path: Path) -> None:
    """Milliseconds per stage, autocast vs fast, one group per (input, stage)."""
    plot_rows(
        [r for r in rows if r["stage"] != "whole"],
        path,
        group=lambda r: f"{'x'.join(map(str, r['shape']))}\n{r['stage']}",
        series=lambda r: r["mode"],
        value="ms",
        ylabel="ms per batch (CUDA events)",
        title="PeakNet per stage: autocast vs fast path",
        log=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
