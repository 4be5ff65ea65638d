#!/usr/bin/env python3
"""Float8 pointwise layers, block by block: does each ConvNeXt V2 MLP linear pay in float8?

    python -m benchmarks.bench_float8 --device cuda --out benchmarks/results/float8_blocks_h200.json

For each backbone stage of the config, one ConvNeXt V2 block (dwconv 7x7 -> LN -> pwconv1 -> GELU ->
GRN -> pwconv2, residual) at the size that stage sees for the input case, bf16 weights, channels_last,
under autocast bf16 and ``torch.compile(dynamic=False)`` as the server's fast path runs it, in four
variants: ``bf16`` (as served), ``fp8_pw1`` / ``fp8_pw2`` (one linear as
:class:`~peaknet_serve.model.float8.Float8Linear`) and ``fp8_both``. Per variant: the median GPU ms of
one block (``--calls`` blocks per timed sample), the ratio to ``bf16``, and the error of the residual
branch against the float32 block, ``RMS(y - y32) / RMS(y32 - x)``. A stage's blocks all have this
shape, so ``depth x`` the saving is what the stage gains; the whole network is measured by
``benchmarks.bench_model`` (modes ``fast`` and ``fast_fp8``).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from benchmarks.timing import add_run_arguments, environment, markdown_table, progress, time_ms, write_results
from peaknet_serve.checkpoint import load_config
from peaknet_serve.model.convnextv2 import ConvNextV2Layer
from peaknet_serve.model.float8 import Float8Linear, require_float8

ROOT = Path(__file__).resolve().parents[1]
PATCH = 4
VARIANTS = {"bf16": (), "fp8_pw1": ("pwconv1",), "fp8_pw2": ("pwconv2",), "fp8_both": ("pwconv1", "pwconv2")}


def make_block(channels: int, device: torch.device, seed: int) -> ConvNextV2Layer:
    """A float32 eval-mode block with random weights (GRN's too: it is zero-initialised, an identity)."""
    torch.manual_seed(seed)
    block = ConvNextV2Layer(channels)
    with torch.no_grad():
        block.grn.weight.normal_(0.0, 0.5)
        block.grn.bias.normal_(0.0, 0.1)
    return block.to(device).eval()


def residual_error(y: torch.Tensor, y32: torch.Tensor, x32: torch.Tensor) -> float:
    """RMS(y - y32) / RMS(y32 - x32): the error relative to the block's residual branch."""
    diff = (y.float() - y32).square().mean().sqrt()
    return float(diff / (y32 - x32).square().mean().sqrt())


def bench_stage(
    stage: int, channels: int, shape: tuple[int, int, int], device: torch.device, args: argparse.Namespace
) -> list[dict]:
    """Rows for one stage's block on a (B, channels, h, w) input."""
    batch, height, width = shape
    reference = make_block(channels, device, seed=stage)
    generator = torch.Generator(device="cpu").manual_seed(stage)
    x32 = torch.randn(batch, channels, height, width, generator=generator).to(device)
    x32 = x32.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        y32 = reference(x32)
    x = x32.to(torch.bfloat16)
    rows = []
    for name, layers in VARIANTS.items():
        progress(f"  stage {stage} ({channels} ch, {height}x{width}) {name} ...")
        block = copy.deepcopy(reference).to(torch.bfloat16).to(memory_format=torch.channels_last)
        for attr in layers:
            setattr(block, attr, Float8Linear.from_linear(getattr(block, attr), use_fast_accum=args.fast_accum))
        torch._dynamo.reset()
        compiled = torch.compile(block, dynamic=False)

        def run(compiled=compiled) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                for _ in range(args.calls - 1):
                    compiled(x)
                return compiled(x)

        y = run()
        timing = time_ms(run, device, warmup=args.warmup, repeats=args.repeats)
        rows.append(
            {
                "stage": stage,
                "channels": channels,
                "input": [batch, channels, height, width],
                "rows_m": batch * height * width,
                "variant": name,
                "block_ms": timing["median_ms"] / args.calls,
                "error_vs_fp32": residual_error(y, y32, x32),
            }
        )
    baseline = rows[0]["block_ms"]
    for row in rows:
        row["ratio_vs_bf16"] = row["block_ms"] / baseline
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/peaknet-33m.yaml")
    parser.add_argument("--case", default="16x1x352x384", help="network input BxCxHxW")
    parser.add_argument("--stages", default="", help="comma-separated stage indices (default: all)")
    parser.add_argument("--calls", type=int, default=10, help="blocks run per timed sample")
    parser.add_argument("--fast-accum", action="store_true", help="torch._scaled_mm's use_fast_accum")
    add_run_arguments(parser, ROOT / "benchmarks/results/float8_blocks.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    require_float8(device)
    torch.backends.cudnn.benchmark = True
    config, _weights = load_config(args.config)
    batch, _, height, width = (int(v) for v in args.case.lower().split("x"))
    stages = [int(s) for s in args.stages.split(",") if s] or list(range(len(config.backbone_hidden_sizes)))
    rows = []
    for stage in stages:
        stride = PATCH * 2**stage
        shape = (batch, height // stride, width // stride)
        rows += bench_stage(stage, config.backbone_hidden_sizes[stage], shape, device, args)
    columns = [
        ("stage", "stage"),
        ("channels", "C"),
        ("rows_m", "rows (M)"),
        ("variant", "variant"),
        ("block_ms", "ms/block"),
        ("ratio_vs_bf16", "÷ bf16"),
        ("error_vs_fp32", "error vs fp32"),
    ]
    table = markdown_table(rows, columns)
    print(table)
    payload = {"environment": environment(device), "config": str(args.config), "case": args.case, "rows": rows}
    write_results(args.out, payload, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
