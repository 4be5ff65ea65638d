"""Join a model's evaluation report with peakfinder8's on the same frames.

The model and the baseline can be scored in separate runs (the model on a GPU host, peakfinder8
wherever its environment is: ``--baseline-only``). Both runs simulate the same frames from the same
seeds; this command checks that the two reports describe the same frames (seed, frame indices,
detectors, input) and writes the combined report and its table, as one run with ``--peakfinder8``
would have.

Example::

    peaknet-evaluate-merge --kind accuracy --model /tmp/gpu/accuracy.json \\
        --baseline /tmp/pf8/accuracy_peakfinder8.json --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peaknet_serve.results import write_report

SAME_FRAMES = (
    "seed",
    "frames_per_geometry",
    "first_frame",
    "input",
    "artefact_probability",
    "tune_frames",
    "crystal_size_nm",
    "cell",
    "photon_energy_ev",
    "match_radius_px",
)


def merge_baseline(model: dict, baseline: dict) -> dict:
    """``model`` with the peakfinder8 entries of ``baseline`` (a ``--baseline-only`` report).

    Raises:
        ValueError: the reports do not describe the same frames, or ``baseline`` has no peakfinder8.
    """
    if "peakfinder8" not in baseline:
        raise ValueError("the baseline report holds no peakfinder8 results")
    for key in SAME_FRAMES:
        if model.get(key) != baseline.get(key):
            raise ValueError(f"the reports differ in {key!r}: {model.get(key)!r} vs {baseline.get(key)!r}")
    if list(model["per_geometry"]) != list(baseline["per_geometry"]):
        raise ValueError(
            f"the reports cover different detectors: {list(model['per_geometry'])} vs {list(baseline['per_geometry'])}"
        )
    merged = json.loads(json.dumps(model))
    merged["peakfinder8"] = {**baseline["peakfinder8"], "command": baseline.get("command")}
    for name, entry in baseline["per_geometry"].items():
        model_frames = [r.get("frame") for r in merged["per_geometry"][name].get("frames", [])]
        baseline_frames = [r.get("frame") for r in entry.get("frames", [])]
        if model_frames != baseline_frames:
            raise ValueError(f"{name}: the reports scored different frames")
        merged["per_geometry"][name]["peakfinder8"] = entry["peakfinder8"]
        for record, other in zip(merged["per_geometry"][name].get("frames", []), entry.get("frames", [])):
            if "peakfinder8" in other:
                record["peakfinder8"] = other["peakfinder8"]
    merged["overall"]["peakfinder8"] = baseline["overall"]["peakfinder8"]
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--kind",
        choices=["accuracy", "robustness", "patternsim"],
        required=True,
        help="peaknet-evaluate, peaknet-evaluate-independent or peaknet-evaluate-patternsim",
    )
    p.add_argument("--model", type=Path, required=True, help="the model's report (JSON)")
    p.add_argument("--baseline", type=Path, required=True, help="the --baseline-only report (JSON)")
    p.add_argument("--out", type=Path, required=True, help="folder for <kind>.json and <kind>.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    merged = merge_baseline(json.loads(args.model.read_text()), json.loads(args.baseline.read_text()))
    if args.kind == "accuracy":
        from peaknet_serve.eval.evaluate import accuracy_table as table
        from peaknet_serve.eval.evaluate import plot_report as plot
    elif args.kind == "robustness":
        from peaknet_serve.eval.independent import plot_report as plot
        from peaknet_serve.eval.independent import robustness_table as table
    else:
        from peaknet_serve.eval.patternsim import patternsim_table as table

        plot = None
    commands = [c for c in (merged.get("command"), merged["peakfinder8"].get("command")) if c]
    reproduce = " and ".join(f"`{c}`" for c in commands) + f", joined by `peaknet-evaluate-merge --kind {args.kind}`"
    write_report(args.out, args.kind, merged, table(merged), reproduce, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
