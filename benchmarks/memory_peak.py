#!/usr/bin/env python3
"""What is alive on the GPU at the moment of peak memory, for one PeakNet forward pass.

    python -m benchmarks.memory_peak --config configs/peaknet-33m.yaml --shape 16x1x352x384 \
        --modes autocast fast --out benchmarks/results/memory_peak_h200.json

Per mode (the modes of :mod:`benchmarks.bench_model`): warm up (compiling where the mode does), then
record the CUDA caching allocator's history (``torch.cuda.memory._record_memory_history``) over
one forward pass, replay its alloc/free events, and report the allocations alive when the
allocated total peaks: size, shape of the source line that allocated them (the Python frame in
PeakNet's modules, or in Inductor's generated code), grouped by site. CUDA only.
"""

from __future__ import annotations

import argparse
import gc
import linecache
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.bench_model import MODES, parse_case, prepare_mode
from benchmarks.timing import environment, markdown_table, progress, write_results

ROOT = Path(__file__).resolve().parents[1]
_OUR_CODE = ("torchinductor", "/handler/", "torch/nn/modules/", "torch/nn/functional.py")


def allocation_site(frames: list[dict]) -> str:
    """``file:line  source`` of the innermost frame in our model code or Inductor's generated code."""
    for frame in frames:
        name = frame.get("filename", "")
        if any(part in name for part in _OUR_CODE) and not name.endswith(".cpp"):
            source = linecache.getline(name, frame.get("line", 0)).strip()
            short = name.split("/")[-1]
            return f"{short}:{frame.get('line')} {frame.get('name')}: {source[:140]}".replace("|", "/")
    return "(no Python frame: " + ("; ".join(f.get("name", "?") for f in frames[:3]) or "?") + ")"


def live_at_peak(trace: list[dict]) -> tuple[int, list[dict]]:
    """Replay allocator events; the blocks alive when the traced allocations peaked.

    Blocks allocated before the recording started (weights, the input) carry no trace and are not
    counted here; the caller reports them as ``allocated_before``.

    Returns:
        ``(peak_bytes, live_blocks)``.
    """
    live: dict[int, dict] = {}
    total = peak = 0
    peak_set: list[dict] = []
    for event in trace:
        action = event["action"]
        if action == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, peak_set = total, list(live.values())
        elif action == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return peak, peak_set


def profile_mode(config: Path, shape: tuple[int, ...], name: str, device: torch.device, top: int) -> dict:
    mode = MODES[name]
    base = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    model, x, run = prepare_mode(config, mode, base, device)
    for _ in range(3 if mode.compile else 2):
        run()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.memory._record_memory_history(max_entries=500_000)
    run()
    torch.cuda.synchronize(device)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snapshot["device_traces"][device.index or 0]
    peak, blocks = live_at_peak(trace)
    by_site: dict[str, list[int]] = defaultdict(list)
    for block in blocks:
        by_site[allocation_site(block.get("frames", []))].append(block["size"])
    sites = sorted(
        ({"site": site, "blocks": len(sizes), "mib": sum(sizes) / 2**20} for site, sizes in by_site.items()),
        key=lambda r: -r["mib"],
    )
    result = {
        "mode": name,
        "shape": list(shape),
        "allocated_before_mib": before / 2**20,
        "peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
        "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
        "traced_peak_mib": peak / 2**20,
        "sites": sites[:top],
    }
    del model, x, run
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/peaknet-33m.yaml")
    parser.add_argument("--shape", default="16x1x352x384", help="input BxCxHxW")
    parser.add_argument("--modes", nargs="+", default=["autocast", "fast"], choices=sorted(MODES))
    parser.add_argument("--top", type=int, default=25, help="sites to keep per mode")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/memory_peak.json")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    shape = parse_case(args.shape)
    results = []
    for name in args.modes:
        progress(f"  {args.config.stem} {shape} {name} ...")
        results.append(profile_mode(args.config, shape, name, device, args.top))
    rows = [
        {"mode": r["mode"], "mib": s["mib"], "blocks": s["blocks"], "site": s["site"]}
        for r in results
        for s in r["sites"]
    ]
    table = markdown_table(
        rows, [("mode", "mode"), ("mib", "MiB live at peak"), ("blocks", "blocks"), ("site", "allocated at")]
    )
    summary = markdown_table(
        results,
        [
            ("mode", "mode"),
            ("allocated_before_mib", "allocated before (weights, input) MiB"),
            ("traced_peak_mib", "peak of the pass's own allocations MiB"),
            ("peak_allocated_mib", "peak allocated MiB"),
            ("peak_reserved_mib", "peak reserved MiB"),
        ],
    )
    print(summary)
    print(table)
    write_results(
        args.out,
        {"environment": environment(device), "config": str(args.config), "results": results},
        summary + "\n\n" + table,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
