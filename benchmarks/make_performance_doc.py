#!/usr/bin/env python3
"""Generate docs/performance.md from the committed results in benchmarks/results/.

    python -m benchmarks.make_performance_doc            # rewrite docs/performance.md
    python -m benchmarks.make_performance_doc --check    # exit 1 if it is out of date

Each result has a ``.md`` table (ending with the command that produced it) next to its ``.json``
and often a ``.png``; this script joins them in a fixed order, each under a heading, after the
hand-written ``benchmarks/results/summary.md`` (the conclusions, citing the tables by name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"

#: (result table, heading): the current measurements, in reading order.
SECTIONS = [
    (
        "e2e_33m_head_h200.md",
        "End to end (H200), 33M trained-like as deployed, the head summed at stride 8: MPS, 8 workers × "
        "batch 4, 40 ms delay, pure bf16, blocking waits, AOTInductor; 20 s per load, cold and warm start",
    ),
    ("e2e_33m_head_repeat_h200.md", "The same, a second run"),
    (
        "sizing_h200.md",
        "Sizing (H200): frames/s per GPU and GPUs per rate for each model and detector, from the model-level "
        "runs that follow and the ePix10k2M end-to-end runs (python -m benchmarks.make_sizing_table)",
    ),
    ("sizing_bundled_h200.md", "Model level for sizing (H200), the bundled model: ePix10k2M, Jungfrau 4M, CSPAD"),
    ("sizing_rayonix_bundled_h200.md", "... and Rayonix"),
    ("sizing_33m_h200.md", "Model level for sizing (H200), 33M: ePix10k2M, Jungfrau 4M, CSPAD"),
    ("sizing_rayonix_33m_h200.md", "... and Rayonix"),
    ("sizing_673m_h200.md", "Model level for sizing (H200), 673M: ePix10k2M, Jungfrau 4M"),
    ("sizing_cspad_673m_h200.md", "... CSPAD"),
    ("sizing_rayonix_673m_h200.md", "... and Rayonix"),
    (
        "e2e_bundled_mps_head_h200.md",
        "End to end (H200), the bundled model, the head summed at stride 8: MPS, 12 workers × batch 4 "
        "against the echo handler's ceiling in one run",
    ),
    (
        "model_head_order_33m_h200.md",
        "Model level (H200), 33M: the head summed at stride 8 (fast_pure) against the public order "
        "(fast_pure_public_head), alternating in one run",
    ),
    ("model_head_order_bundled_h200.md", "Model level (H200), the bundled model: the same comparison"),
    (
        "model_merge_33m_h200.md",
        "Model level (H200), 33M: BiFPN separable convs with the 1x1 depthwise conv folded into the pointwise "
        "conv (fast_pure) against unmerged (fast_pure_unmerged), alternating in one run",
    ),
    ("model_merge_bundled_h200.md", "Model level (H200), the bundled model: the same comparison"),
    (
        "e2e_33m_recipe_h200.md",
        "End to end (H200), 33M trained-like as deployed (docs/performance-serving.md): MPS, 8 workers × "
        "batch 4, 40 ms delay, pure bf16, blocking waits, AOTInductor; a 60 s 120 Hz stream, cold and warm start",
    ),
    (
        "e2e_padded_h200.md",
        "End to end (H200): TorchServe under the load-test client, the bundled model compiled, "
        "with and without autocast",
    ),
    (
        "e2e_33m_mps_h200.md",
        "End to end (H200), the public 33M config (trained-like random weights): workers × batch, "
        "cold and warm start-up",
    ),
    (
        "e2e_33m_mps_models_h200.md",
        "End to end (H200), 33M: random-weight vs trained-like weights, start-up of 8 workers",
    ),
    (
        "e2e_33m_mps_onoff_h200.md",
        "End to end (H200), 33M trained-like, 4 workers × batch 4: NVIDIA MPS on vs off in one run, then a warm restart",
    ),
    (
        "e2e_33m_buckets_h200.md",
        "End to end (H200), 33M trained-like, MPS, 4 workers × batch 4: panel buckets [16, 32, 64] vs "
        "[16, 32, 48, 64] in one run",
    ),
    (
        "e2e_33m_workers_h200.md",
        "End to end (H200), 33M trained-like, MPS, batch 4: 4, 6 and 8 workers in one run",
    ),
    (
        "e2e_33m_gpuwait_h200.md",
        "End to end (H200), 33M trained-like, MPS, 8 workers × batch 4: polling vs blocking GPU waits, "
        "and pure bf16, in one run",
    ),
    (
        "e2e_33m_delay_h200.md",
        "End to end (H200), 33M trained-like, MPS, 8 workers × batch 4, pure bf16, blocking waits: "
        "maxBatchDelay 5, 20 and 40 ms in one run",
    ),
    (
        "e2e_33m_aoti_aoti_h200.md",
        "End to end (H200), 33M trained-like, 4 workers × batch 4: AOTInductor packages, cold start then a warm restart",
    ),
    (
        "e2e_bundled_mps_h200.md",
        "End to end (H200), the bundled model under MPS: 8 and 12 workers × batch 4 against the echo "
        "handler's ceiling in one run",
    ),
    (
        "e2e_compressed_h200.md",
        "End to end (H200), the bundled model, MPS, 8 workers × batch 4: HDF5 bitshuffle-LZ4 and zstd "
        "requests against raw uint16 in one run",
    ),
    ("decode_cpu.md", "Request decoding per encoding (CPU): one ePix10k2M frame, in process and through the sandbox"),
    ("peaks_cap25_h200.md", "Peak extraction per mask (H200): bounded labelling with the default 25% cap"),
    ("e2e_alloc_default_h200.md", "End to end (H200): worker GPU memory with the default CUDA allocator ..."),
    ("e2e_alloc_expandable_h200.md", "... and with expandable segments (the next command, a fresh server)"),
    ("handler_h200.md", "Handler level (H200): bytes → decode → H2D → infer → peaks → JSON, per stage"),
    (
        "model_padded_h200.md",
        "Model level (H200), 33M config: the fast path with the depthwise-padding tuning, "
        "its ablation and the autocast baseline in one run (expandable segments)",
    ),
    (
        "model_33m_h200.md",
        "Model level (H200), 33M config: every precision mode in one run, ratios vs autocast, steady-state peak memory",
    ),
    ("model_673m_1920_h200.md", "Model level (H200): the 673M config at 4 × 1920², with peak reserved memory"),
    (
        "model_fp8_h200.md",
        "Model level (H200), 33M config, 64 ePix10k2M panels: float8 e4m3 ConvNeXt MLP linears (`fast_fp8`, "
        "an experiment, not a serving option) against the fast path and float32",
    ),
    (
        "profile_h200.md",
        "Where the time goes (H200), 33M config, 64 ePix10k2M panels: per stage and per GPU kernel kind, "
        "autocast baseline vs fast path",
    ),
    ("memory_peak_1920_h200.md", "What is alive at peak GPU memory (H200), 33M at 8 × 1920²: autocast vs fast path"),
    (
        "memory_peak_pure_1920_h200.md",
        "What is alive at peak GPU memory (H200), 33M at 8 × 1920²: the fast path without autocast",
    ),
    ("memory_peak_epix_h200.md", "What is alive at peak GPU memory (H200), 33M on one ePix10k2M frame"),
    ("precision_agreement_h200.md", "Peak agreement of bf16 and fp16 with float32 (H200)"),
    ("cpu.md", "CPU only: CPU seconds per frame of the bundled model, one torch thread"),
    ("indexing_crystfel.md", "Indexing with CrystFEL 0.12.0 (CPU): the server's peaks vs peakfinder8 vs the truth"),
    (
        "indexing_crystfel_masks.md",
        "The same with every request carrying the run's bad-pixel mask (--request-masks)",
    ),
]


def performance_doc() -> str:
    parts = [
        "# Performance",
        "",
        "Generated by `python -m benchmarks.make_performance_doc` from `benchmarks/results/`; every table "
        "ends with the command that produced it.",
        "",
    ]
    summary = RESULTS / "summary.md"
    if summary.exists():
        parts += ["## Summary", "", summary.read_text().strip(), ""]
    for name, heading in SECTIONS:
        path = RESULTS / name
        if not path.exists():
            raise SystemExit(f"{path} is listed in SECTIONS but not committed")
        parts += [f"## {heading}", "", f"`benchmarks/results/{name}`", "", path.read_text().strip(), ""]
        for png in (path.with_suffix(".png"), path.with_name(path.stem + "_memory.png")):
            if png.exists():
                parts += [f"![{png.stem}](../benchmarks/results/{png.name})", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/performance.md is out of date")
    args = parser.parse_args(argv)
    text = performance_doc()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python -m benchmarks.make_performance_doc", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
