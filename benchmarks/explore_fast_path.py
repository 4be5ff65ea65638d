#!/usr/bin/env python3
"""Exploring the compiled fast path on a GPU: variants of it, and where single kernels lose time.

Not a benchmark with baselines: quick, one-process probes whose printed output is kept in
``benchmarks/results/explore_fast_path_h200.md`` with the command that printed it.

    # the compiled pure-bf16 fast path at 8 x 1920^2, and variants of it; the 6 longest kernels each
    python -m benchmarks.explore_fast_path variants --shape 8x1x1920x1920 \\
        --variants autocast,pure,rr1,fold,mm,nopad,taps --top 6
    # ConvNeXt's 7x7 depthwise conv: cuDNN vs 49 shifted multiply-adds fused by Inductor
    python -m benchmarks.explore_fast_path depthwise
    # which convs of the eager channels_last model get an NCHW input; one head conv alone
    python -m benchmarks.explore_fast_path layouts

Variants (all but ``autocast`` are bf16 weights without autocast, channels_last, class-difference
head, ``torch.compile(dynamic=False)``; names combine, e.g. ``rr1_fold``):
  autocast  float32 weights + autocast bf16, eager, full logits (the baseline)
  pure      the fast path as served with ``autocast: false`` (depthwise padding tuned first)
  rr1       Inductor option ``realize_reads_threshold=1`` (store a value read more than once
            instead of recomputing it in each reader)
  mm        Inductor option ``conv_1x1_as_mm=True``
  nopad     Inductor option ``comprehensive_padding=False``
  fold      the BiFPN's depthwise 1x1 conv folded into the pointwise conv that follows it
  taps      ConvNeXt's depthwise 7x7 conv written as 49 shifted multiply-adds for Inductor to fuse
  eager     not compiled (the ``lean_pure`` mode of bench_model)
  dwsplit   the 192-channel depthwise convs run as two 96-channel convs
  dwnchw    the 192-channel depthwise convs run on an NCHW copy of their input

Depthwise 7x7 convs alone (cuDNN picks a slow kernel at some sizes, see handler.model.depthwise):

    # by channel count, layout, and channel-split rewrites
    python -m benchmarks.explore_fast_path sweep --top 4
    # by spatial size, and the 240^2 case computed on zero-padded inputs
    python -m benchmarks.explore_fast_path spatial

The ``convs`` probe runs one variant under ``torch.profiler`` with shapes and strides recorded and
lists every convolution with its input's layout and the GPU time of its kernels, longest first:

    python -m benchmarks.explore_fast_path convs --variants pure
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.bench_model import MODES, parse_case, prepare_mode
from benchmarks.profile_model import kernel_times
from benchmarks.timing import time_ms
from handler.checkpoint import load_peaknet
from handler.model.depthwise import PaddableDepthwiseConv2d, padded_depthwise_conv
from handler.model.bifpn import DepthwiseSeparableConv2d

CONFIG = Path(__file__).resolve().parents[1] / "configs/peaknet-33m.yaml"
ORIGINAL_DEPTHWISE_FORWARD = PaddableDepthwiseConv2d.forward


def fold_depthwise_1x1(model: nn.Module) -> nn.Module:
    """Replace every 1x1 :class:`DepthwiseSeparableConv2d` (no bias) by one 1x1 conv with weight
    ``W_pointwise * w_depthwise``: the same map, one conv instead of two."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, DepthwiseSeparableConv2d) and child.depthwise_conv.kernel_size == (1, 1):
                pointwise, depthwise = child.pointwise_conv, child.depthwise_conv
                conv = nn.Conv2d(pointwise.in_channels, pointwise.out_channels, 1, bias=False)
                conv = conv.to(pointwise.weight.device, pointwise.weight.dtype)
                with torch.no_grad():
                    weight = pointwise.weight.float() * depthwise.weight.float().view(1, -1, 1, 1)
                    conv.weight.copy_(weight.to(pointwise.weight.dtype))
                setattr(module, name, conv.to(memory_format=torch.channels_last))
    return model


def depthwise_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise k x k conv ('same' padding) of (B, C, H, W) ``x`` as k*k shifted multiply-adds in
    float32, cast back to ``x.dtype``; ``weight`` (C, 1, k, k)."""
    k = weight.shape[-1]
    pad = k // 2
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad)).float()
    w = weight.float()
    acc = bias.float().view(1, -1, 1, 1) if bias is not None else 0
    for i in range(k):
        for j in range(k):
            acc = acc + padded[:, :, i:i + height, j:j + width] * w[:, 0, i, j].view(1, -1, 1, 1)
    return acc.to(x.dtype)


def _depthwise_forward(compute: Callable[[PaddableDepthwiseConv2d, torch.Tensor], torch.Tensor],
                       channels: int | None = None) -> Callable[[PaddableDepthwiseConv2d, torch.Tensor], torch.Tensor]:
    """A ``PaddableDepthwiseConv2d.forward`` that runs ``compute(conv, x)`` instead, for every conv or
    (given ``channels``) for the convs with that many channels only."""
    def forward(self: PaddableDepthwiseConv2d, x: torch.Tensor) -> torch.Tensor:
        if channels is not None and self.in_channels != channels:
            return ORIGINAL_DEPTHWISE_FORWARD(self, x)
        return compute(self, x)
    return forward


#: Variant name part -> the ConvNeXt depthwise conv's replacement forward (first match wins).
DEPTHWISE_VARIANTS = {
    # 49 shifted multiply-adds for Inductor to fuse
    "taps": _depthwise_forward(lambda conv, x: depthwise_taps(x, conv.weight, conv.bias)),
    # the 192-channel convs as two 96-channel convs
    "dwsplit": _depthwise_forward(lambda conv, x: depthwise_split(x, conv.weight, conv.bias, 96), channels=192),
    # the 192-channel convs on an NCHW copy of their input, the result back to channels_last
    "dwnchw": _depthwise_forward(
        lambda conv, x: F.conv2d(x.contiguous(), conv.weight.contiguous(), conv.bias, padding=3, groups=192)
        .contiguous(memory_format=torch.channels_last), channels=192),
}


def print_top_kernels(fn: Callable, device: torch.device, top: int) -> None:
    times = kernel_times(fn, device)
    print(f"    total kernel ms {sum(ms for ms, _ in times.values()):.1f}")
    for name, (ms, calls) in list(times.items())[:top]:
        print(f"    {ms:7.2f} ms x{int(calls):3d} {name[:150]}")


def build_variant(name: str, base: torch.Tensor, device: torch.device) -> Callable[[], torch.Tensor]:
    """A no-argument callable running variant ``name`` on ``base``; returns the peak mask (B, H, W).
    The variant is a :data:`~benchmarks.bench_model.MODES` mode (``autocast``, ``lean_pure`` for
    ``eager``, else ``fast_pure``) with the name's rewrites and Inductor options."""
    PaddableDepthwiseConv2d.forward = next(
        (forward for part, forward in DEPTHWISE_VARIANTS.items() if part in name), ORIGINAL_DEPTHWISE_FORWARD)
    mode = MODES["autocast" if name == "autocast" else "lean_pure" if "eager" in name else "fast_pure"]
    options = {}
    if "rr1" in name:
        options["realize_reads_threshold"] = 1
    if "mm" in name:
        options["conv_1x1_as_mm"] = True
    if "nopad" in name:
        options["comprehensive_padding"] = False
    rewrite = fold_depthwise_1x1 if "fold" in name else None
    _, _, run = prepare_mode(CONFIG, mode, base, device, rewrite=rewrite, compile_options=options)
    return run


def variants(shape: tuple[int, ...], names: list[str], top: int, device: torch.device) -> None:
    base = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    reference = None
    for name in names:
        started = time.time()
        run = build_variant(name, base, device)
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        timing = time_ms(run, device, warmup=0, repeats=8)
        mask = run()
        reference = mask if reference is None else reference
        print(f"{name:14s} {timing['median_ms']:8.2f} ms  alloc {torch.cuda.max_memory_allocated() / 2**30:6.2f} "
              f"reserved {torch.cuda.max_memory_reserved() / 2**30:6.2f} GiB  "
              f"agree {(mask == reference).float().mean().item():.4f}  ({time.time() - started:.0f}s)", flush=True)
        if top and name != "autocast":
            print_top_kernels(run, device, top)
        del run
        gc.collect()
        torch.cuda.empty_cache()
    PaddableDepthwiseConv2d.forward = ORIGINAL_DEPTHWISE_FORWARD


def depthwise(device: torch.device) -> None:
    for shape in [(8, 96, 480, 480), (16, 96, 88, 96), (8, 384, 120, 120)]:
        channels = shape[1]
        conv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        conv = conv.to(device, torch.bfloat16).to(memory_format=torch.channels_last)
        x = torch.randn(shape, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            cudnn = time_ms(lambda conv=conv, x=x: conv(x), device, 3, 10)["median_ms"]
            torch._dynamo.reset()
            taps = torch.compile(lambda t, conv=conv: depthwise_taps(t, conv.weight, conv.bias), dynamic=False)
            fused = time_ms(lambda taps=taps, x=x: taps(x), device, 3, 10)["median_ms"]
            error = (taps(x).float() - conv(x).float()).abs().max().item()
        print(f"dw {shape}: cudnn {cudnn:.3f} ms, taps compiled {fused:.3f} ms, max|diff| {error:.3g}", flush=True)


def depthwise_split(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """A 7x7 depthwise conv (padding 3) run as convs over ``chunk`` channels each, concatenated."""
    outputs = []
    for start in range(0, x.shape[1], chunk):
        part = slice(start, start + chunk)
        outputs.append(F.conv2d(x[:, part], weight[part], None if bias is None else bias[part],
                                padding=3, groups=min(chunk, x.shape[1] - start)))
    return torch.cat(outputs, dim=1)


def depthwise_sweep(device: torch.device, top: int) -> None:
    """cuDNN's 7x7 depthwise conv (bf16) by channel count, spatial size and layout, and rewrites of
    the slow ones: ms per call, median of 10."""
    cases = [(8, c, 240, 240) for c in (64, 96, 128, 160, 192, 224, 256, 384)]
    cases += [(8, 96, 480, 480), (8, 192, 120, 120), (8, 384, 120, 120), (16, 192, 88, 96), (16, 192, 44, 48),
              (1, 192, 240, 240), (4, 192, 240, 240)]
    with torch.inference_mode():
        for shape in cases:
            channels = shape[1]
            weight = torch.randn(channels, 1, 7, 7, device=device, dtype=torch.bfloat16)
            bias = torch.randn(channels, device=device, dtype=torch.bfloat16)
            x = torch.randn(shape, device=device, dtype=torch.bfloat16)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            w_cl = weight.contiguous(memory_format=torch.channels_last)
            reference = F.conv2d(x.float(), weight.float(), bias.float(), padding=3, groups=channels)
            row = {}
            candidates = {
                "cl": lambda: F.conv2d(x_cl, w_cl, bias, padding=3, groups=channels),
                "nchw": lambda: F.conv2d(x, weight, bias, padding=3, groups=channels),
                "split96": lambda: depthwise_split(x_cl, w_cl, bias, 96),
                "split64": lambda: depthwise_split(x_cl, w_cl, bias, 64),
            }
            for name, fn in candidates.items():
                error = (fn().float() - reference).abs().max().item()
                row[name] = f"{time_ms(fn, device, 3, 10)['median_ms']:.3f}" + ("" if error < 0.1 else f"(err {error:.2g})")
            with torch.backends.cudnn.flags(enabled=False):
                fn = candidates["nchw"]
                row["native"] = f"{time_ms(fn, device, 3, 10)['median_ms']:.3f}"
            print(f"dw7x7 {shape}: " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            if top and shape == (8, 192, 240, 240):
                for name in ("cl", "nchw", "split96"):
                    print(f"  kernels of {name}:")
                    print_top_kernels(candidates[name], device, top)


def depthwise_spatial(device: torch.device) -> None:
    """cuDNN's channels_last 7x7 depthwise conv (bf16, 8 x 192 channels) by spatial size, with and
    without cuDNN benchmarking, and the 240^2 case computed on padded inputs: ms per call."""
    with torch.inference_mode():
        for size in (224, 232, 236, 238, 240, 242, 244, 248, 256, 272, 288, 320, 360, 480):
            shape = (8, 192, size, size)
            weight = torch.randn(192, 1, 7, 7, device=device, dtype=torch.bfloat16)
            weight = weight.contiguous(memory_format=torch.channels_last)
            bias = torch.randn(192, device=device, dtype=torch.bfloat16)
            x = torch.randn(shape, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
            row = {"cl": time_ms(lambda: F.conv2d(x, weight, bias, padding=3, groups=192), device, 3, 10)["median_ms"],
                   "pad0": time_ms(lambda: F.conv2d(F.pad(x, (3, 3, 3, 3)), weight, bias, groups=192),
                                   device, 3, 10)["median_ms"]}
            with torch.backends.cudnn.flags(enabled=True, benchmark=False):
                row["heuristic"] = time_ms(lambda: F.conv2d(x, weight, bias, padding=3, groups=192),
                                           device, 3, 10)["median_ms"]
            if size == 240:
                reference = F.conv2d(x, weight, bias, padding=3, groups=192)
                for target in (242, 248, 256):
                    fn = lambda target=target: padded_depthwise_conv(x, weight, bias, (target, target))
                    error = (fn().float() - reference.float()).abs().max().item()
                    row[f"to{target}"] = time_ms(fn, device, 3, 10)["median_ms"]
                    row[f"to{target}_err"] = error
            print(f"dw7x7 {shape}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)


def layouts(device: torch.device, top: int) -> None:
    model = load_peaknet(CONFIG, random_init=True, dtype=torch.bfloat16, device=device)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 1920, 1920, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    seen = []

    def record(module, inputs, output):
        if module.kernel_size != (1, 1) and module.groups == 1:
            t = inputs[0]
            seen.append((tuple(module.weight.shape), tuple(t.shape), t.stride(),
                         t.is_contiguous(memory_format=torch.channels_last)))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model.forward_peak_score(x)
    for hook in hooks:
        hook.remove()
    print("eager convs other than 1x1 and depthwise: (weight, input shape, input stride, channels_last)")
    for entry in seen:
        print("   ", entry)
    with torch.inference_mode():
        print("eager fast path (no compile), 8x1920^2")
        print_top_kernels(lambda: model.forward_peak_score(x), device, top)
        conv = model.seg_lateral_layers[1].layers[0][0]
        h = torch.randn(8, 256, 240, 240, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        print(f"one head 3x3 conv alone, channels_last (8, 256, 240, 240): "
              f"{time_ms(lambda: conv(h), device, 3, 10)['median_ms']:.3f} ms")
        print_top_kernels(lambda: conv(h), device, 3)


def conv_times(run: Callable[[], torch.Tensor]) -> list[dict]:
    """Every ``aten::convolution`` of one ``run()``: input and weight shapes, whether the input is
    channels_last, and the GPU time of the kernels it launched (ms; 0 without CUDA), longest first.

    Strides come from the profiler's Chrome trace ("Input Strides"), which every PyTorch 2.x
    writes (``FunctionEvent`` has no strides before 2.12); its convolutions are matched to the
    profiler's events, which carry the GPU time, in start order, with their shapes checked."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    run()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities, record_shapes=True) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as scratch:
        trace_path = Path(scratch) / "trace.json"
        prof.export_chrome_trace(str(trace_path))
        trace = json.loads(trace_path.read_text())["traceEvents"]
    traced = sorted((e for e in trace if e.get("cat") == "cpu_op" and e.get("name") == "aten::convolution"),
                    key=lambda e: e["ts"])
    events = sorted((e for e in prof.events() if e.name == "aten::convolution"), key=lambda e: e.time_range.start)
    if len(traced) != len(events):
        raise RuntimeError(f"{len(traced)} convolutions in the trace, {len(events)} profiler events")
    convs = []
    for event, entry in zip(events, traced):
        shape, weight = entry["args"]["Input Dims"][:2]
        stride = entry["args"]["Input Strides"][0]
        if list(event.input_shapes[0]) != list(shape):
            raise RuntimeError(f"trace and events out of step: {shape} vs {event.input_shapes[0]}")
        layout = torch.empty_strided(shape, stride, device="meta")
        convs.append({"input": tuple(shape), "weight": tuple(weight), "input_stride": tuple(stride),
                      "channels_last": layout.is_contiguous(memory_format=torch.channels_last),
                      "gpu_ms": event.device_time_total / 1e3})
    return sorted(convs, key=lambda c: -c["gpu_ms"])


def convs(shape: tuple[int, ...], name: str, device: torch.device, top: int) -> None:
    run = build_variant(name, torch.randn(shape, generator=torch.Generator().manual_seed(0)), device)
    for _ in range(3):
        run()
    print(f"{name}: convolutions by GPU time (input, weight, input stride, channels_last, ms)")
    for conv in conv_times(run)[:top]:
        print(f"    {conv['input']} {conv['weight']} {conv['input_stride']} {conv['channels_last']} "
              f"{conv['gpu_ms']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["variants", "depthwise", "sweep", "spatial", "layouts", "convs"])
    parser.add_argument("--shape", default="8x1x1920x1920")
    parser.add_argument("--variants", default="autocast,pure,rr1,fold,mm")
    parser.add_argument("--top", type=int, default=0, help="longest kernels to list per variant")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    if args.probe == "variants":
        variants(parse_case(args.shape), args.variants.split(","), args.top, device)
    elif args.probe == "convs":
        convs(parse_case(args.shape), args.variants.split(",")[0], device, args.top or 40)
    elif args.probe == "depthwise":
        depthwise(device)
    elif args.probe == "spatial":
        depthwise_spatial(device)
    elif args.probe == "sweep":
        depthwise_sweep(device, args.top)
    else:
        layouts(device, args.top or 8)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
