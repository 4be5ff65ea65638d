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
from pathlib import Path

import numpy as np

from peaknet_serve.eval.peakfinder8 import Peakfinder8, Pf8Frame
from peaknet_serve.eval.runner import (
    AGREEMENT_RADIUS,
    DTYPES,
    BaselineScores,
    ModelOptions,
    ModelScores,
    add_peakfinder8_args,
    agreement_columns,
    check_baseline_only,
    detector_table,
    device_fields,
    evaluation_parser,
    f1_columns,
    mask_note,
    per_frame_cell,
    position_error_columns,
    reference_dtype,
    run_evaluation,
    save_figure,
    tuning_note,
)
from peaknet_serve.sim.peaksim.frame import SimulatedFrame, simulate_frame
from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, DetectorGeometry, get_geometry
from peaknet_serve.sim.peaksim.matching import MATCH_RADIUS


def pf8_frame(frame: SimulatedFrame, geometry: DetectorGeometry, as_uint16: bool = False) -> Pf8Frame:
    """A peaksim frame as peakfinder8 gets it: the same ADU the model gets, the frame's mask, beam
    distances from its geometry and its gain."""
    x, y = geometry.pixel_lab_xy(frame.params.beam_offset)
    radius = np.hypot(x, y) / geometry.pixel_size
    adu = frame.uint16.astype(np.float32) if as_uint16 else frame.adu
    return Pf8Frame(adu, frame.mask, radius, frame.params.response.adu_per_photon)


def evaluate(
    options: ModelOptions,
    as_uint16: bool,
    first_frame: int = 0,
    artefact_probability: float = 0.0,
    peakfinder8: Peakfinder8 | None = None,
    pf8_tune_frames: int = 3,
    pf8_tune_first_frame: int = 5000,
) -> dict:
    finders = options.finders()
    config, frames, dtypes, seed = options.config, options.frames, options.dtypes, options.seed
    reference = reference_dtype(dtypes)
    report: dict = {
        "config": str(config),
        **device_fields(options.device),
        "threshold": options.threshold,
        "model_bad_pixel_mask": options.bad_pixel_mask,
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
    baseline = BaselineScores(peakfinder8)
    if (header := baseline.header(pf8_tune_frames, pf8_tune_first_frame)) is not None:
        report["peakfinder8"] = header

    def simulate(geometry_name: str, f_index: int) -> SimulatedFrame:
        return simulate_frame(
            get_geometry(geometry_name),
            np.random.default_rng([seed, GEOMETRY_INDEX[geometry_name], f_index]),
            artefact_probability=artefact_probability,
        )

    totals = ModelScores(dtypes)
    for geometry_name in options.geometries:
        geometry = get_geometry(geometry_name)
        model = ModelScores(dtypes)
        strong_per_frame = []
        tuning = (
            simulate(geometry_name, i) for i in range(pf8_tune_first_frame, pf8_tune_first_frame + pf8_tune_frames)
        )
        baseline.start(geometry_name, ((pf8_frame(f, geometry, as_uint16), f.score) for f in tuning))
        for f_index in range(first_frame, first_frame + frames):
            frame = simulate(geometry_name, f_index)
            strong_centres = frame.scoring_points()[0]
            if baseline.active:
                baseline.score(pf8_frame(frame, geometry, as_uint16), frame.score, truth=strong_centres)
            strong = frame.peaks.strong
            strong_per_frame.append(int(strong.sum()))
            # a frame without strong peaks has F1 0 at its first false positive: it does not count in mean_frame_f1
            model.score(
                finders,
                frame.uint16 if as_uint16 else frame.adu,
                frame.score,
                keep_f1=bool(strong.any()),
                truth=strong_centres,
                good_pixels=options.good_pixels(frame.mask),
            )
        entry = {
            "frame_shape": list(geometry.frame_shape),
            "strong_peaks_per_frame": float(np.mean(strong_per_frame)),
            "frames_with_strong_peaks": int(np.count_nonzero(strong_per_frame)),
            "accuracy": model.accuracy(frames, mean_frame_f1=True),
            "agreement_with_" + reference: model.agreement(),
        }
        if (pf8_entry := baseline.finish()) is not None:
            entry["peakfinder8"] = pf8_entry
        report["per_geometry"][geometry_name] = entry
        totals.add(model)
        print(f"{geometry_name}: {model.summary(agreement=True)}{baseline.summary()}", flush=True)
    report["overall"] = {"accuracy": totals.accuracy(), "agreement_with_" + reference: totals.agreement()}
    if (pf8_overall := baseline.overall()) is not None:
        report["overall"]["peakfinder8"] = pf8_overall
    return report


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
    save_figure(
        fig,
        f"PeakNet on held-out peaknet_serve.sim.peaksim frames ({report['frames_per_geometry']} per detector, "
        f"{report['device_name']})",
        path,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = evaluation_parser(
        __doc__,
        GEOMETRIES,
        frames=20,
        frames_help="frames per geometry",
        dtypes=list(DTYPES),
        dtypes_help="the first is the reference for agreement",
        seed=20240,
    )
    p.add_argument("--first-frame", type=int, default=0, help="index of the first frame of each geometry")
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


def accuracy_table(report: dict) -> str:
    """The report as a markdown table: per geometry and overall, F1/precision/recall per dtype and
    the peak-list agreement of each reduced precision with the reference dtype."""
    dtypes = list(report["overall"]["accuracy"])
    lines = detector_table(
        report,
        [
            ("strong peaks/frame", per_frame_cell("strong_peaks_per_frame")),
            *f1_columns(dtypes),
            *agreement_columns(dtypes, report["reference_dtype"]),
            *position_error_columns(report["reference_dtype"], "peakfinder8" in report),
        ],
    )
    frames = report["frames_per_geometry"]
    artefacts = report.get("artefact_probability", 0.0)
    lines.append(
        f"\n{frames} held-out frames per detector (seed {report['seed']}), {report['input']}, "
        + (f"artefact probability {artefacts:g}, " if artefacts else "")
        + f"{mask_note(report)}, on {report['device_name']}; matches within {report['match_radius_px']} px; position error: median "
        "distance of the matched peaks from the simulated spot centres."
    )
    if "peakfinder8" in report:
        lines.append(
            tuning_note(report) + ". Milliseconds per frame: the model end to end on the device above (preprocessing, "
            "forward, peak extraction), peakfinder8 inside its worker on one CPU core."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run(options: ModelOptions, worker: Peakfinder8 | None) -> dict:
        return evaluate(
            options,
            args.uint16,
            args.first_frame,
            args.artefact_probability,
            worker,
            args.pf8_tune_frames,
            args.pf8_tune_first_frame,
        )

    return run_evaluation("peaknet-evaluate", args, argv, "accuracy", run, accuracy_table, plot_report)


if __name__ == "__main__":
    raise SystemExit(main())
