#!/usr/bin/env python
"""Accuracy of a PeakNet on held-out simulated frames, in float32, bf16 and fp16.

For every detector geometry, frames are simulated with seeds disjoint from training
(``np.random.default_rng([--seed, geometry_index, frame_index])``; training uses
``[train_seed, worker]``), and run through the server's own finder in each precision
(:func:`peaknet_serve.pipeline.build_finder`: the same preprocessing, peak-score head, autocast on CUDA,
threshold and connected components as the handler). Found peaks are matched one-to-one to strong truth peaks
within 2 px (:mod:`peaknet_serve.sim.peaksim.matching`); detections near weak spots, and at blobs where a bright
spot merges with another spot, count neither way (:meth:`peaknet_serve.sim.peaksim.frame.SimulatedFrame.scoring_points`).

Reports precision/recall/F1 per geometry and overall for each precision, and the agreement of each
reduced precision's peak lists with float32's (matched within 1 px / union). F1 is pooled over
all frames; ``mean_frame_f1`` averages it over the frames that hold strong peaks. Writes a JSON
report and a PNG plot.

With ``--peakfinder8``, OM's peakfinder8 (:mod:`peaknet_serve.eval.peakfinder8`) runs beside the
model: tuned per detector by a grid search on ``--pf8-tune-frames`` frames of indices from
``--pf8-tune-first-frame`` (disjoint from the scored ones), then scored on the same held-out
frames by the same rule; the report gives its F1, precision, recall and milliseconds per frame
next to the model's.

Examples::

    peaknet-evaluate --frames 20 --out benchmarks/results           # GPU
    peaknet-evaluate --frames 1 --geometries epix10k2m --dtypes float32 bfloat16 \\
        --device cpu --out /tmp/eval                                             # CPU, small
    peaknet-evaluate --frames 16 --dtypes float32 bfloat16 --peakfinder8 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.device.finder import PanelPeakFinder
from peaknet_serve.eval.peakfinder8 import (
    DEFAULT_GRID,
    Peakfinder8,
    Pf8Frame,
    baseline_cells,
    baseline_entry,
    describe,
    model_ms,
    score,
    tune,
)
from peaknet_serve.pipeline import build_finder
from peaknet_serve.resources import BUNDLED_MODEL_CONFIG
from peaknet_serve.sim.peaksim.frame import SimulatedFrame, simulate_frame
from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, DetectorGeometry, get_geometry
from peaknet_serve.sim.peaksim.matching import (
    MATCH_RADIUS,
    MatchCounts,
    assign_within_radius,
    position_errors,
    position_summary,
)

DEFAULT_CONFIG = BUNDLED_MODEL_CONFIG
AGREEMENT_RADIUS = 1.0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def evaluation_finder(
    config: Path, dtype: str, device: torch.device, threshold: float | None, max_batch: int
) -> PanelPeakFinder:
    """The server's finder (:func:`~peaknet_serve.pipeline.build_finder`) in precision ``dtype``:
    what is scored is what is served (autocast on CUDA, eager; ``PEAKNET_PRECISION`` is not read)."""
    settings = HandlerSettings(
        config=str(config), precision=dtype, threshold=threshold, max_batch_panels=max_batch, warmup=False
    )
    return build_finder(settings, device, mode=ServingMode.from_settings(settings, device, env={})).finder


def find_frame_peaks(finder: PanelPeakFinder, raw: np.ndarray) -> np.ndarray:
    """Peaks of one frame as the server finds them.

    Args:
        raw: (P, H, W) frame in its stored dtype (float32 ADU or uint16).

    Returns:
        (K, 3) float64 rows (panel, ss, fs).
    """
    panels = torch.from_numpy(np.ascontiguousarray(raw)).to(finder.device)
    table = finder.find(panels).table.to_host()
    return np.stack([table.image_index, table.ss, table.fs], axis=1).astype(np.float64)


def agreement_counts(reference: np.ndarray, other: np.ndarray, radius: float = AGREEMENT_RADIUS) -> dict[str, int]:
    """Matched / only-in-reference / only-in-other peak counts of two peak lists."""
    matched = len(assign_within_radius(reference, other, radius)[0])
    return {"matched": matched, "only_reference": len(reference) - matched, "only_other": len(other) - matched}


def agreement_summary(counts: dict[str, int]) -> dict[str, float]:
    union = counts["matched"] + counts["only_reference"] + counts["only_other"]
    return {**counts, "agreement": counts["matched"] / union if union else 1.0}


def pf8_frame(frame: SimulatedFrame, geometry: DetectorGeometry, as_uint16: bool = False) -> Pf8Frame:
    """A peaksim frame as peakfinder8 gets it: the same ADU the model gets, the frame's mask, beam
    distances from its geometry and its gain."""
    x, y = geometry.pixel_lab_xy(frame.params.beam_offset)
    radius = np.hypot(x, y) / geometry.pixel_size
    adu = frame.uint16.astype(np.float32) if as_uint16 else frame.adu
    return Pf8Frame(adu, frame.mask, radius, frame.params.response.adu_per_photon)


def evaluate(
    config: Path,
    geometries: list[str],
    frames: int,
    dtypes: list[str],
    device: torch.device,
    seed: int,
    threshold: float | None,
    max_batch: int,
    as_uint16: bool,
    first_frame: int = 0,
    artefact_probability: float = 0.0,
    peakfinder8: Peakfinder8 | None = None,
    pf8_tune_frames: int = 3,
    pf8_tune_first_frame: int = 5000,
) -> dict:
    finders = {name: evaluation_finder(config, name, device, threshold, max_batch) for name in dtypes}
    reference = dtypes[0] if dtypes else "float32"  # no dtypes: peakfinder8 alone
    report: dict = {
        "config": str(config),
        "device": str(device),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threshold": threshold,
        "match_radius_px": MATCH_RADIUS,
        "agreement_radius_px": AGREEMENT_RADIUS,
        "frames_per_geometry": frames,
        "first_frame": first_frame,
        "seed": seed,
        "input": "uint16" if as_uint16 else "float32 ADU",
        "artefact_probability": artefact_probability,
        "reference_dtype": reference,
        "per_geometry": {},
    }
    if peakfinder8 is not None:
        report["peakfinder8"] = {
            **peakfinder8.version(),
            "tune_frames": pf8_tune_frames,
            "tune_first_frame": pf8_tune_first_frame,
            "grid_points": len(DEFAULT_GRID),
        }
    pf8_total = MatchCounts()
    pf8_total_errors: list[np.ndarray] = []

    def simulate(geometry_name: str, f_index: int) -> SimulatedFrame:
        return simulate_frame(
            get_geometry(geometry_name),
            np.random.default_rng([seed, GEOMETRY_INDEX[geometry_name], f_index]),
            artefact_probability=artefact_probability,
        )

    totals = {name: MatchCounts() for name in dtypes}
    total_errors: dict[str, list[np.ndarray]] = {name: [] for name in dtypes}
    total_agree = {name: {"matched": 0, "only_reference": 0, "only_other": 0} for name in dtypes[1:]}
    for geometry_name in geometries:
        geometry = get_geometry(geometry_name)
        counts = {name: MatchCounts() for name in dtypes}
        agree = {name: {"matched": 0, "only_reference": 0, "only_other": 0} for name in dtypes[1:]}
        frame_f1 = {name: [] for name in dtypes}
        errors: dict[str, list[np.ndarray]] = {name: [] for name in dtypes}
        pf8_errors: list[np.ndarray] = []
        strong_per_frame = []
        seconds = {name: 0.0 for name in dtypes}
        tuned, pf8_counts, pf8_ms = None, MatchCounts(), []
        if peakfinder8 is not None:
            tuning = [
                simulate(geometry_name, i) for i in range(pf8_tune_first_frame, pf8_tune_first_frame + pf8_tune_frames)
            ]
            tuned = tune(peakfinder8, [(pf8_frame(f, geometry, as_uint16), f.score) for f in tuning])
            print(f"{geometry_name}: peakfinder8 tuned ({describe(tuned.as_dict()['best'])})", flush=True)
        for f_index in range(first_frame, first_frame + frames):
            frame = simulate(geometry_name, f_index)
            raw = frame.uint16 if as_uint16 else frame.adu
            if tuned is not None:
                result, found_pf8 = score(peakfinder8, pf8_frame(frame, geometry, as_uint16), frame.score, tuned.best)
                pf8_counts = pf8_counts + result
                pf8_ms.append(found_pf8.ms)
            strong = frame.peaks.strong
            strong_points = frame.scoring_points()[0]
            if tuned is not None:
                pf8_errors.append(position_errors(found_pf8.peaks, strong_points))
            strong_per_frame.append(int(strong.sum()))
            found = {}
            for name in dtypes:
                t0 = time.perf_counter()
                found[name] = find_frame_peaks(finders[name], raw)
                seconds[name] += time.perf_counter() - t0
                result = frame.score(found[name])
                counts[name] = counts[name] + result
                errors[name].append(position_errors(found[name], strong_points))
                if strong.any():  # a frame without strong peaks has F1 0 at its first false positive
                    frame_f1[name].append(result.f1)
            for name in dtypes[1:]:
                for key, value in agreement_counts(found[reference], found[name]).items():
                    agree[name][key] += value
        report["per_geometry"][geometry_name] = {
            "frame_shape": list(geometry.frame_shape),
            "strong_peaks_per_frame": float(np.mean(strong_per_frame)),
            "frames_with_strong_peaks": int(np.count_nonzero(strong_per_frame)),
            "accuracy": {
                name: {
                    **counts[name].as_dict(),
                    "mean_frame_f1": float(np.mean(frame_f1[name])) if frame_f1[name] else None,
                    "position_error_px": position_summary(np.concatenate([np.zeros(0), *errors[name]])),
                    "seconds": seconds[name],
                    "ms_per_frame": 1e3 * seconds[name] / max(frames, 1),
                }
                for name in dtypes
            },
            "agreement_with_" + reference: {name: agreement_summary(agree[name]) for name in dtypes[1:]},
        }
        if tuned is not None:
            report["per_geometry"][geometry_name]["peakfinder8"] = {
                **baseline_entry(tuned, pf8_counts, pf8_ms),
                "position_error_px": position_summary(np.concatenate([np.zeros(0), *pf8_errors])),
            }
            pf8_total = pf8_total + pf8_counts
            pf8_total_errors += pf8_errors
        for name in dtypes:
            totals[name] = totals[name] + counts[name]
            total_errors[name] += errors[name]
        for name in dtypes[1:]:
            for key in agree[name]:
                total_agree[name][key] += agree[name][key]
        print(
            f"{geometry_name}: "
            + ", ".join(
                f"{n} F1={counts[n].f1:.4f} (P={counts[n].precision:.4f} R={counts[n].recall:.4f}, "
                f"median position error {error_text(errors[n])})"
                for n in dtypes
            )
            + "".join(f"; {n} agreement={agreement_summary(agree[n])['agreement']:.4f}" for n in dtypes[1:])
            + (
                f"; peakfinder8 F1={pf8_counts.f1:.4f} (P={pf8_counts.precision:.4f} R={pf8_counts.recall:.4f}, "
                f"median position error {error_text(pf8_errors)})"
                if tuned is not None
                else ""
            ),
            flush=True,
        )
    report["overall"] = {
        "accuracy": {
            name: {
                **totals[name].as_dict(),
                "position_error_px": position_summary(np.concatenate([np.zeros(0), *total_errors[name]])),
            }
            for name in dtypes
        },
        "agreement_with_" + reference: {name: agreement_summary(total_agree[name]) for name in dtypes[1:]},
    }
    if peakfinder8 is not None:
        report["overall"]["peakfinder8"] = {
            "accuracy": pf8_total.as_dict(),
            "position_error_px": position_summary(np.concatenate([np.zeros(0), *pf8_total_errors])),
        }
    return report


def error_text(errors: list[np.ndarray]) -> str:
    """Median of the position errors of a list of frames, for a progress line."""
    median = position_summary(np.concatenate([np.zeros(0), *errors]))["median"]
    return "—" if median is None else f"{median:.3f} px"


def median_error_cell(entry: dict) -> str:
    """The median position error (px) of an accuracy entry, a dash where it has none."""
    median = entry.get("position_error_px", {}).get("median")
    return "—" if median is None else f"{median:.3f}"


GEOMETRY_INDEX = {name: i for i, name in enumerate(sorted(GEOMETRIES))}


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    geometries = list(report["per_geometry"])
    dtypes = list(report["overall"]["accuracy"])
    groups = geometries + ["overall"]
    metrics = ("precision", "recall", "f1")
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.2 * (len(metrics) + 1), 4.2))
    width = 0.8 / len(dtypes)
    x = np.arange(len(groups))

    def accuracy(group: str) -> dict:
        return report["overall"]["accuracy"] if group == "overall" else report["per_geometry"][group]["accuracy"]

    for ax, metric in zip(axes, metrics):
        for i, name in enumerate(dtypes):
            values = [accuracy(g)[name][metric] for g in groups]
            ax.bar(x + (i - (len(dtypes) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(x, groups, rotation=30)
        ax.set_ylim(min(0.8, min(accuracy(g)[n][metric] for g in groups for n in dtypes) - 0.02), 1.0)
        ax.set_title(metric)
        ax.axhline(0.95, color="k", lw=0.6, ls="--")
    axes[0].legend(fontsize=8)
    reference = report["reference_dtype"]
    ax = axes[-1]
    others = dtypes[1:]
    for i, name in enumerate(others):
        values = [
            (report["overall"] if g == "overall" else report["per_geometry"][g])["agreement_with_" + reference][name][
                "agreement"
            ]
            for g in groups
        ]
        ax.bar(
            x + (i - (len(others) - 1) / 2) * (0.8 / max(1, len(others))),
            values,
            0.8 / max(1, len(others)),
            label=f"{name} vs {reference}",
        )
    ax.set_xticks(x, groups, rotation=30)
    ax.set_ylim(0.95, 1.0005)
    ax.axhline(0.99, color="k", lw=0.6, ls="--")
    ax.set_title("peak-list agreement")
    ax.legend(fontsize=8)
    fig.suptitle(
        f"PeakNet on held-out peaknet_serve.sim.peaksim frames ({report['frames_per_geometry']} per detector, "
        f"{report['device_name']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="PeakNet YAML (public pipeline layout)")
    p.add_argument("--geometries", nargs="+", default=sorted(GEOMETRIES), choices=sorted(GEOMETRIES))
    p.add_argument("--frames", type=int, default=20, help="frames per geometry")
    p.add_argument("--first-frame", type=int, default=0, help="index of the first frame of each geometry")
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=list(DTYPES),
        choices=list(DTYPES),
        help="the first is the reference for agreement",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=20240)
    p.add_argument("--threshold", type=float, default=None, help="P(peak) threshold; default argmax")
    p.add_argument("--max-batch", type=int, default=16, help="panels per forward pass")
    p.add_argument("--uint16", action="store_true", help="feed uint16 frames instead of float32 ADU")
    p.add_argument(
        "--artefact-probability",
        type=float,
        default=0.0,
        help="chance per frame of each simulated artefact (jet streak, beamstop arm, common mode; "
        "peaknet_serve.sim.peaksim.artefacts); 0 gives the frames of the committed results",
    )
    add_peakfinder8_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for accuracy.json and accuracy.png")
    args = p.parse_args(argv)
    check_baseline_only(p, args)
    if not 0.0 <= args.artefact_probability <= 1.0:
        p.error(f"--artefact-probability must be in [0, 1], got {args.artefact_probability}")
    return args


def add_peakfinder8_args(p: argparse.ArgumentParser) -> None:
    """The baseline's options, shared by the evaluations."""
    p.add_argument(
        "--peakfinder8",
        action="store_true",
        help="score OM's peakfinder8 beside the model (needs `make pf8-venv` or $PEAKNET_PF8_PYTHON)",
    )
    p.add_argument("--pf8-tune-frames", type=int, default=3, help="frames per detector for peakfinder8's grid search")
    p.add_argument(
        "--pf8-tune-first-frame",
        type=int,
        default=5000,
        help="index of the first tuning frame (disjoint from the scored frames)",
    )
    p.add_argument("--pf8-python", type=Path, default=None, help="Python of peakfinder8's environment")
    p.add_argument(
        "--baseline-only",
        action="store_true",
        help="score peakfinder8 alone (no model) and write <report>_peakfinder8.json, for "
        "peaknet-evaluate-merge to join with a model's report on the same frames",
    )


def check_baseline_only(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--baseline-only`` needs ``--peakfinder8`` and runs no model."""
    if args.baseline_only:
        if not args.peakfinder8:
            p.error("--baseline-only needs --peakfinder8")
        args.dtypes = []


def accuracy_table(report: dict) -> str:
    """The report as a markdown table: per geometry and overall, F1/precision/recall per dtype and
    the peak-list agreement of each reduced precision with the reference dtype."""
    dtypes = list(report["overall"]["accuracy"])
    reduced = [d for d in dtypes if d != report["reference_dtype"]]
    baseline = "peakfinder8" in report
    header = (
        ["detector", "strong peaks/frame"]
        + [f"F1 {d} (P / R)" for d in dtypes]
        + [f"{d} = {report['reference_dtype']}" for d in reduced]
        + [f"position error px {report['reference_dtype']}"]
        + (["position error px peakfinder8"] if baseline else [])
        + (
            ["F1 peakfinder8 (P / R)", f"ms/frame {report['reference_dtype']}", "ms/frame peakfinder8"]
            if baseline
            else []
        )
    )
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    rows = [(name, entry) for name, entry in report["per_geometry"].items()] + [("overall", report["overall"])]
    for name, entry in rows:
        cells = [
            f"**{name}**" if name == "overall" else name,
            f"{entry['strong_peaks_per_frame']:.1f}" if "strong_peaks_per_frame" in entry else "—",
        ]
        for d in dtypes:
            a = entry["accuracy"][d]
            cells.append(f"{a['f1']:.3f} ({a['precision']:.3f} / {a['recall']:.3f})")
        for d in reduced:
            cells.append(f"{100 * entry['agreement_with_float32'][d]['agreement']:.2f}%")
        cells.append(median_error_cell(entry["accuracy"][report["reference_dtype"]]))
        if baseline:
            cells.append(median_error_cell(entry.get("peakfinder8") or {}))
            pf8_cells = baseline_cells(entry.get("peakfinder8"))
            cells += [
                pf8_cells[0],
                model_ms(entry["accuracy"][report["reference_dtype"]], report["frames_per_geometry"]),
                pf8_cells[1],
            ]
        lines.append("| " + " | ".join(cells) + " |")
    frames = report["frames_per_geometry"]
    artefacts = report.get("artefact_probability", 0.0)
    lines.append(
        f"\n{frames} held-out frames per detector (seed {report['seed']}), {report['input']}, "
        + (f"artefact probability {artefacts:g}, " if artefacts else "")
        + f"on {report['device_name']}; matches within {report['match_radius_px']} px; position error: median "
        "distance of the matched peaks from the simulated spot centres."
    )
    if baseline:
        pf8 = report["peakfinder8"]
        lines.append(
            f"peakfinder8: OM {pf8['om']}, tuned per detector on {pf8['tune_frames']} frames (indices "
            f"{pf8['tune_first_frame']}+) over {pf8['grid_points']} parameter sets, best pooled F1: "
            + "; ".join(
                f"{g} {describe(e['peakfinder8']['best'])}"
                for g, e in report["per_geometry"].items()
                if "peakfinder8" in e
            )
            + ". Milliseconds per frame: the model end to end on the device above (preprocessing, "
            "forward, peak extraction), peakfinder8 inside its worker on one CPU core."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with contextlib.ExitStack() as stack:
        finder = stack.enter_context(Peakfinder8(args.pf8_python)) if args.peakfinder8 else None
        report = evaluate(
            args.config,
            args.geometries,
            args.frames,
            args.dtypes,
            torch.device(args.device),
            args.seed,
            args.threshold,
            args.max_batch,
            args.uint16,
            args.first_frame,
            args.artefact_probability,
            finder,
            args.pf8_tune_frames,
            args.pf8_tune_first_frame,
        )
    command = " ".join(["peaknet-evaluate", *(argv if argv is not None else sys.argv[1:])])
    report["command"] = command
    if args.baseline_only:
        (args.out / "accuracy_peakfinder8.json").write_text(json.dumps(report, indent=1))
        return 0
    (args.out / "accuracy.json").write_text(json.dumps(report, indent=1))
    plot_report(report, args.out / "accuracy.png")
    (args.out / "accuracy.md").write_text(f"{accuracy_table(report)}\n\nReproduce: `{command}`\n")
    overall = report["overall"]
    print(json.dumps(overall, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
