#!/usr/bin/env python3
"""Compiled bilinear upsampling: F.interpolate against the gather-free
:func:`~peaknet_serve.model.resize.upsample_bilinear_int`, on the 33M PeakNet's shapes.

    python -m benchmarks.bench_upsample --device cuda --out /tmp/upsample_h200.json
    python -m benchmarks.bench_upsample --device cpu --small --out /tmp/upsample_cpu.json  # smoke run

A 64-panel batch of 352 x 384 puts the BiFPN (256 features) at strides 4-32, i.e. 88x96, 44x48,
22x24 and 11x12; its top-down path and the segmentation head's lateral branches upsample 11x12,
22x24 and 44x48 maps by 2, and the head upsamples the stride-4 score (1 channel) by 4. Cases:

  bifpn_x2      the plain 2x upsample, float32 channels_last (under autocast the BiFPN's
                activations are float32: LayerNorm returns float32)
  seg_x2        GroupNorm(32) -> GELU -> 2x upsample, as a lateral branch runs it (the
                conv before it is a separate kernel), float32 channels_last
  score_x4      the stride-4 peak score, bfloat16 (B, 1, 88, 96), upsampled by 4

Each function is compiled (``torch.compile(dynamic=False)``) per variant and shape; the figure is
the median over repeats of CUDA-event times (perf_counter on the CPU). ``max_rel_diff`` is the
largest difference between the two compiled outputs over the output's largest magnitude;
``kernels`` the number of generated kernels of each variant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

from benchmarks.timing import add_run_arguments, environment, markdown_table, progress, time_ms, write_results
from peaknet_serve.model.resize import upsample_bilinear_int

ROOT = Path(__file__).resolve().parents[1]

#: (case, input shape, dtype, factor) of the 33M PeakNet at 64 x 1 x 352 x 384.
CASES = [
    *(("bifpn_x2", (64, 256, h, w), torch.float32, 2) for h, w in ((11, 12), (22, 24), (44, 48))),
    *(("seg_x2", (64, 256, h, w), torch.float32, 2) for h, w in ((11, 12), (22, 24), (44, 48))),
    ("score_x4", (64, 1, 88, 96), torch.bfloat16, 4),
]
SMALL_CASES = [
    ("bifpn_x2", (2, 32, 5, 6), torch.float32, 2),
    ("seg_x2", (2, 32, 5, 6), torch.float32, 2),
    ("score_x4", (2, 1, 8, 12), torch.bfloat16, 4),
]

UPSAMPLERS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "interpolate": lambda x, s: F.interpolate(x, scale_factor=float(s), mode="bilinear", align_corners=False),
    "blend": upsample_bilinear_int,
}


def case_function(case: str, upsample: Callable, factor: int, channels: int, device: torch.device) -> Callable:
    """The function a case times: the upsample alone, or GroupNorm -> GELU -> upsample."""
    if case != "seg_x2":
        return lambda x: upsample(x, factor)
    norm = torch.nn.GroupNorm(32, channels).to(device)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return lambda x: upsample(F.gelu(norm(x)), factor)


def kernel_count(code: list[str]) -> int:
    """Generated kernels in Inductor's output code (Triton on CUDA, C++ on the CPU)."""
    return sum(source.count("@triton.jit") + source.count("async_compile.cpp_pybinding(") for source in code)


def bench(cases: list, device: torch.device, warmup: int, repeats: int) -> list[dict]:
    rows = []
    for case, shape, dtype, factor in cases:
        progress(f"  {case} {shape} {dtype} x{factor} ...")
        generator = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        row: dict = {"case": case, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "factor": factor}
        outputs = {}
        for name, upsample in UPSAMPLERS.items():
            torch.manual_seed(0)  # the same GroupNorm parameters for both variants
            fn = case_function(case, upsample, factor, shape[1], device)
            torch._dynamo.reset()
            compiled = torch.compile(fn, dynamic=False)
            with torch.no_grad():
                outputs[name], code = run_and_get_code(compiled, x)

                def run(compiled: Callable = compiled, x: torch.Tensor = x) -> torch.Tensor:
                    with torch.no_grad():
                        return compiled(x)

                row[f"{name}_ms"] = time_ms(run, device, warmup=warmup, repeats=repeats)["median_ms"]
            row[f"{name}_kernels"] = kernel_count(code)
        reference, blended = outputs["interpolate"].float(), outputs["blend"].float()
        row["max_rel_diff"] = float((reference - blended).abs().max() / reference.abs().max().clamp_min(1e-30))
        row["speedup"] = row["interpolate_ms"] / row["blend_ms"]
        rows.append(row)
    torch._dynamo.reset()
    return rows


COLUMNS = [
    ("case", "case"),
    ("shape", "input"),
    ("dtype", "dtype"),
    ("interpolate_ms", "interpolate ms"),
    ("blend_ms", "blend ms"),
    ("speedup", "× (interpolate / blend)"),
    ("interpolate_kernels", "kernels interp."),
    ("blend_kernels", "kernels blend"),
    ("max_rel_diff", "max rel. diff"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run)")
    add_run_arguments(parser, ROOT / "benchmarks/results/upsample.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = bench(SMALL_CASES if args.small else CASES, device, args.warmup, args.repeats)
    table = markdown_table(rows, COLUMNS)
    print(table)
    write_results(args.out, {"environment": environment(device), "rows": rows}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
