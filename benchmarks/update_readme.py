#!/usr/bin/env python3
"""Regenerate README.md's performance section from the committed results in benchmarks/results/.

    python -m benchmarks.update_readme

Each result has a ``.md`` table (with the command that produced it) next to its ``.json``; this
script splices them, in a fixed order with a one-line heading each, between the
``<!-- perf:begin -->`` and ``<!-- perf:end -->`` markers. ``benchmarks/results/summary.md``
(hand-written conclusions that cite the tables) goes first when present.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SECTIONS = [
    ("summary.md", None),
    ("model_padded_h200.md", "Model level (H200), 33M config: the fast path with the depthwise-padding tuning, "
                             "its ablation, and the autocast baseline in one run (expandable segments)"),
    ("model_33m_h200.md", "Model level (H200), 33M config: every precision mode in one run, ratios vs autocast, "
                          "steady-state peak memory"),
    ("model_pure_h200.md", "Model level (H200), 33M config: the bf16 paths with and without autocast"),
    ("model_expandable_h200.md", "Model level (H200), 33M config, with the CUDA allocator's expandable segments "
                                 "for every mode: reserved memory close to allocated"),
    ("memory_peak_1920_h200.md", "What is alive at peak memory (H200), 33M at 8 x 1920x1920: autocast vs fast path"),
    ("memory_peak_pure_1920_h200.md", "What is alive at peak memory (H200), 33M at 8 x 1920x1920: fast path "
                                      "without autocast"),
    ("model_h200.md", "Model level (H200), first run: also the 673M config on ePix10k2M frames (its peak "
                      "memory includes the warm-up's allocations)"),
    ("model_673m_1920_h200.md", "Model level (H200): the 673M config at 4 x 1920x1920, with peak reserved memory"),
    ("profile_h200.md", "Where the time goes (H200): per stage and per GPU kernel kind, autocast vs fast path "
                        "(the kind split is wrong, see the note; `explore_fast_path_h200.md` lists kernels by name)"),
    ("handler_h200.md", "Handler level (H200): bytes → decode → H2D → infer → peaks, per stage"),
    ("e2e_padded_h200.md", "End to end (H200), session 5: the worker with the depthwise-padding tuning, "
                           "with and without autocast"),
    ("e2e_alloc_default_h200.md", "End to end (H200), session 5: worker GPU memory with the default CUDA "
                                  "allocator ..."),
    ("e2e_alloc_expandable_h200.md", "... and with expandable segments (the next command, a fresh server)"),
    ("e2e_h200.md", "End to end (H200): TorchServe under the load-test client, vs the echo ceiling"),
    ("e2e_h200_16threads.md", "End to end (H200) before the one-thread default: 2 and 4 workers, with and "
                              "without one-copy socket reads"),
]


def performance_section() -> str:
    parts = []
    for name, heading in SECTIONS:
        path = RESULTS / name
        if not path.exists():
            continue
        text = path.read_text().strip()
        parts.append(text if heading is None else f"**{heading}** (`benchmarks/results/{name}`)\n\n{text}")
        for png in (path.with_suffix(".png"), path.with_name(path.stem + "_memory.png")):
            if png.exists():
                parts.append(f"![{png.stem}](benchmarks/results/{png.name})")
    return "\n\n".join(parts) if parts else "No results committed yet."


def splice(readme: str, body: str, marker: str = "perf") -> str:
    pattern = re.compile(rf"(<!-- {marker}:begin -->\n).*?(\n<!-- {marker}:end -->)", re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no <!-- {marker}:begin/end --> markers")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), readme)


def main() -> int:
    readme = ROOT / "README.md"
    readme.write_text(splice(readme.read_text(), performance_section()))
    print("README.md performance section updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
