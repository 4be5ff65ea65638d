#!/usr/bin/env python
"""Robustness of a PeakNet on frames of an independent simulator (:mod:`peaknet_serve.sim.independent`).

The bundled model was trained only on :mod:`peaknet_serve.sim.peaksim` frames. This script scores it on frames of a
second simulator written separately, with different spot profiles (Moffat / pseudo-Voigt, streaks),
lattice construction, background, panel layouts and detector response, and its own strong/weak
truth rule (integrated I/sigma >= 6 in a box, brightest pixel >= 3 sigma; see the simulator's
docstring).

Frames are run exactly as :mod:`peaknet_serve.eval.evaluate` runs them (the server's own finder from
:func:`peaknet_serve.pipeline.build_finder`, in each dtype). Found peaks are
matched one-to-one to strong truth peaks within 2 px (:mod:`peaknet_serve.sim.peaksim.matching`); detections within
2 px of weak spots count neither way.

Seeds: frame ``i`` of detector ``d`` (index in sorted detector names: cspad 0, epix10k2m 1,
jungfrau4m 2, rayonix 3) is ``simulate(d, np.random.default_rng([--seed, 0x1D5, d, i]))``. The
4-word seed sequences with the ``0x1D5`` tag are disjoint across detectors and frames and from the
2- and 3-word sequences of ``peaknet-train`` / ``peaknet-evaluate`` (which drive a different
simulator anyway); ``tests/sim/test_independent.py`` uses other seeds.

Writes ``robustness.json``, ``robustness.md`` and ``robustness.png`` into ``--out``.

Examples::

    peaknet-evaluate-independent --frames 8 --device cpu --out benchmarks/results
    peaknet-evaluate-independent --frames 50 --dtypes float32 bfloat16 --out /tmp/robust  # GPU
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from peaknet_serve.checkpoint import load_config
from peaknet_serve.eval.peakfinder8 import Peakfinder8, Pf8Frame
from peaknet_serve.eval.runner import (
    BaselineScores,
    ModelOptions,
    ModelScores,
    add_peakfinder8_args,
    check_baseline_only,
    detector_table,
    device_fields,
    evaluation_parser,
    mask_note,
    per_frame_cell,
    reference_dtype,
    run_evaluation,
    save_figure,
    tuning_note,
)
from peaknet_serve.sim.independent import (
    DETECTOR_NAMES,
    PEAK_PIXEL_MIN_PHOTONS,
    PEAK_PIXEL_SIGMAS,
    STRONG_I_OVER_SIGMA,
    WEAK_I_OVER_SIGMA,
    IndependentFrame,
    detector,
    pixel_xy,
    simulate,
)
from peaknet_serve.sim.peaksim.matching import MATCH_RADIUS, assign_within_radius, match_peaks

SEED_TAG = 0x1D5
DETECTOR_INDEX = {name: i for i, name in enumerate(sorted(DETECTOR_NAMES))}
IOS_BINS = (6.0, 10.0, 20.0, 50.0, 200.0, float("inf"))
HOT_PIXEL_RADIUS = 1.5


def frame_rng(seed: int, detector_name: str, frame_index: int) -> np.random.Generator:
    """The generator of frame ``frame_index`` of ``detector_name`` (see the module docstring)."""
    return np.random.default_rng([seed, SEED_TAG, DETECTOR_INDEX[detector_name], frame_index])


def bin_label(lo: float, hi: float) -> str:
    return f"{lo:g}+" if hi == float("inf") else f"{lo:g}-{hi:g}"


def recall_by_ios(frame: IndependentFrame, found: np.ndarray) -> dict[str, list[int]]:
    """Strong spots and found strong spots per I/sigma bin: ``{label: [n_strong, n_found]}``."""
    t = frame.truth
    strong = np.flatnonzero(t.strong)
    _, hit = assign_within_radius(found, t.points(strong))
    found_mask = np.zeros(len(strong), dtype=bool)
    found_mask[hit] = True
    ios = t.i_over_sigma[strong]
    out = {}
    for lo, hi in itertools.pairwise(IOS_BINS):
        sel = (ios >= lo) & (ios < hi)
        out[bin_label(lo, hi)] = [int(sel.sum()), int(found_mask[sel].sum())]
    return out


def _near(points: np.ndarray, targets: np.ndarray, radius: float) -> np.ndarray:
    """(N,) bool: each (panel, ss, fs) point lies within ``radius`` px of a target on its panel."""
    out = np.zeros(len(points), dtype=bool)
    for i, p in enumerate(points):
        same = targets[targets[:, 0] == p[0]]
        out[i] = bool(len(same)) and float(np.hypot(same[:, 1] - p[1], same[:, 2] - p[2]).min()) <= radius
    return out


FP_CATEGORIES = (
    "hot_pixel",
    "dim_spot",
    "near_strong",
    "beam_stop_edge",
    "jet_streak",
    "panel_edge",
    "block_edge",
    "other",
)
NEAR_STRONG_RADIUS = 5.0


def structure_flags(frame: IndependentFrame, points: np.ndarray) -> dict[str, np.ndarray]:
    """Which (panel, ss, fs) points lie on a non-Bragg structure of the frame, each (N,) bool:
    within 8 px of the beam stop's shadow edge, within 2 widths of the jet streak's axis, within
    2 px of a panel edge, or within 1 px of a common-mode block / ASIC boundary (detectors with
    multi-row blocks)."""
    det = detector(frame.params.detector)
    p = frame.params
    panel, ss, fs = points[:, 0].astype(np.int64), points[:, 1], points[:, 2]
    x = (
        det.origins_mm[panel, 0]
        - p.beam_mm[0]
        + (fs * det.fs_dirs[panel, 0] + ss * det.ss_dirs[panel, 0]) * det.pixel_mm
    )
    y = (
        det.origins_mm[panel, 1]
        - p.beam_mm[1]
        + (fs * det.fs_dirs[panel, 1] + ss * det.ss_dirs[panel, 1]) * det.pixel_mm
    )
    radius, arm_angle, arm_width, _ = p.beamstop
    near = 8.0 * det.pixel_mm
    along = np.cos(arm_angle) * x + np.sin(arm_angle) * y
    across = -np.sin(arm_angle) * x + np.cos(arm_angle) * y
    beam_stop = (np.abs(np.hypot(x, y) - radius) <= near) | (
        (along > -near) & (np.abs(np.abs(across) - arm_width / 2) <= near)
    )
    jet = np.zeros(len(points), dtype=bool)
    if p.jet is not None:
        angle, _, width, _ = p.jet
        jet = np.abs(-np.sin(angle) * x + np.cos(angle) * y) <= 2.0 * width
    n_ss, n_fs = det.panel_shape
    panel_edge = (ss < 2) | (fs < 2) | (ss > n_ss - 3) | (fs > n_fs - 3)
    block_edge = np.zeros(len(points), dtype=bool)
    if det.cm_rows > 1:

        def on_boundary(coord: np.ndarray, period: int) -> np.ndarray:
            phase = np.mod(coord + 0.5, period)
            return np.minimum(phase, period - phase) <= 1.0

        block_edge = on_boundary(ss, det.cm_rows) | on_boundary(fs, det.asic_shape[1])
    return {"beam_stop_edge": beam_stop, "jet_streak": jet, "panel_edge": panel_edge, "block_edge": block_edge}


def false_positive_breakdown(frame: IndependentFrame, found: np.ndarray) -> dict[str, int]:
    """Where the false positives of ``found`` lie (as :func:`peaknet_serve.sim.peaksim.matching.match_peaks` counts
    them), each counted once, in the order of :data:`FP_CATEGORIES`: within 1.5 px of a hot
    pixel; within 2 px of a spot too dim to count (I/sigma < 2); within 5 px of a strong spot
    (mislocalised, split or merged with a neighbour); on a structure of :func:`structure_flags`;
    elsewhere."""
    t = frame.truth
    f_idx, _ = assign_within_radius(found, frame.strong_points)
    rest = found[np.setdiff1d(np.arange(len(found)), f_idx)]
    rest = rest[~_near(rest, frame.weak_points, MATCH_RADIUS)]
    flags = {
        "hot_pixel": _near(rest, frame.hot_pixels.astype(np.float64), HOT_PIXEL_RADIUS),
        "dim_spot": _near(rest, t.points(~(t.strong | t.weak)), MATCH_RADIUS),
        "near_strong": _near(rest, frame.strong_points, NEAR_STRONG_RADIUS),
        **structure_flags(frame, rest),
    }
    taken = np.zeros(len(rest), dtype=bool)
    counts = {}
    for name in FP_CATEGORIES[:-1]:
        hit = flags[name] & ~taken
        counts[name] = int(hit.sum())
        taken |= hit
    counts["other"] = int((~taken).sum())
    return counts


def frame_summary(frame: IndependentFrame) -> dict:
    """Conditions of one frame worth correlating with accuracy."""
    p = frame.params
    return {
        "strong": int(frame.truth.strong.sum()),
        "weak": int(frame.truth.weak.sum()),
        "spots": len(frame.truth.panel),
        "background_photons": p.background_level,
        "gain_adu_per_photon": p.gain,
        "read_noise_photons": p.read_noise,
        "common_mode_photons": p.common_mode,
        "width_px": p.width_px,
        "profile": p.profile,
        "streak": p.streak,
        "lattices": len(p.crystals),
        "max_cell_edge_a": max(p.crystals[0].cell[:3]),
        "wavelength_a": p.wavelength_a,
        "distance_mm": p.distance_mm,
        "jet": p.jet is not None,
    }


def weights_digest(config: Path) -> tuple[str | None, str | None]:
    """The weights file ``config`` names and the first 16 hex digits of its SHA-256 (None if none)."""
    _, weights = load_config(config)
    if weights is None or not Path(weights).is_file():
        return (None if weights is None else str(weights)), None
    return str(weights), hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]


def pf8_frame(frame: IndependentFrame, as_uint16: bool = False) -> Pf8Frame:
    """A frame of the independent simulator as peakfinder8 gets it: the model's ADU, the mask, beam
    distances in pixels and the frame's gain."""
    det = detector(frame.params.detector)
    x, y = pixel_xy(det, frame.params.beam_mm)
    adu = frame.uint16.astype(np.float32) if as_uint16 else frame.adu
    return Pf8Frame(adu, frame.mask, np.hypot(x, y) / det.pixel_mm, frame.params.gain)


def _scorer(frame: IndependentFrame):
    """Score a peak list against ``frame`` as the model's is scored."""
    return lambda found: match_peaks(found, frame.strong_points, frame.weak_points)


def evaluate(
    options: ModelOptions,
    as_uint16: bool,
    first_frame: int = 0,
    peakfinder8: Peakfinder8 | None = None,
    pf8_tune_frames: int = 3,
    pf8_tune_first_frame: int = 5000,
) -> dict:
    finders = options.finders()
    config, frames, dtypes, seed = options.config, options.frames, options.dtypes, options.seed
    reference = reference_dtype(dtypes)
    weights, digest = weights_digest(config)
    report: dict = {
        "simulator": "peaknet_serve/sim/independent.py",
        "config": str(config),
        "weights": weights,
        "weights_sha256_16": digest,
        **device_fields(options.device),
        "threshold": options.threshold,
        "model_bad_pixel_mask": options.bad_pixel_mask,
        "match_radius_px": MATCH_RADIUS,
        "frames_per_geometry": frames,
        "first_frame": first_frame,
        "seed": seed,
        "seed_rule": f"np.random.default_rng([{seed}, {SEED_TAG:#x}, detector_index, frame_index]); "
        f"detector_index: {DETECTOR_INDEX}",
        "input": "uint16" if as_uint16 else "float32 ADU",
        "reference_dtype": reference,
        "strong_rule": (
            f"integrated I/sigma >= {STRONG_I_OVER_SIGMA:g} (box, Poisson + read noise + background "
            f"estimate), brightest pixel >= {PEAK_PIXEL_MIN_PHOTONS:g} photon and >= "
            f"{PEAK_PIXEL_SIGMAS:g} sigma, centre pixel good, resolved from brighter spots; "
            f"weak: other spots with I/sigma >= {WEAK_I_OVER_SIGMA:g}"
        ),
        "per_geometry": {},
    }
    baseline = BaselineScores(peakfinder8)
    if (header := baseline.header(pf8_tune_frames, pf8_tune_first_frame)) is not None:
        report["peakfinder8"] = header
    totals = ModelScores(dtypes)
    started = time.perf_counter()
    for geometry_name in options.geometries:
        model = ModelScores(dtypes)
        sim_seconds = 0.0
        ios = {bin_label(lo, hi): [0, 0] for lo, hi in itertools.pairwise(IOS_BINS)}
        fps = dict.fromkeys(FP_CATEGORIES, 0)
        records, shape = [], None
        tuning = (
            simulate(geometry_name, frame_rng(seed, geometry_name, i))
            for i in range(pf8_tune_first_frame, pf8_tune_first_frame + pf8_tune_frames)
        )
        baseline.start(geometry_name, ((pf8_frame(f, as_uint16), _scorer(f)) for f in tuning))
        for f_index in range(first_frame, first_frame + frames):
            t0 = time.perf_counter()
            frame = simulate(geometry_name, frame_rng(seed, geometry_name, f_index))
            sim_seconds += time.perf_counter() - t0
            shape = list(frame.adu.shape)
            record = {"frame": f_index, **frame_summary(frame)}
            if baseline.active:
                baseline.score(pf8_frame(frame, as_uint16), _scorer(frame), record)
            found = model.score(
                finders,
                frame.uint16 if as_uint16 else frame.adu,
                _scorer(frame),
                record=record,
                good_pixels=options.good_pixels(frame.mask),
            )
            if reference in found:
                for key, (n, k) in recall_by_ios(frame, found[reference]).items():
                    ios[key][0] += n
                    ios[key][1] += k
                for key, value in false_positive_breakdown(frame, found[reference]).items():
                    fps[key] += value
            records.append(record)
            shown = reference if reference in record else "peakfinder8"
            r = record[shown]
            print(
                f"{geometry_name} frame {f_index}: strong {record['strong']}, weak {record['weak']}, "
                f"background {record['background_photons']:.3g} ph/px, {record['profile']}/{record['streak']}; "
                f"{shown} P={r['precision']:.3f} R={r['recall']:.3f} F1={r['f1']:.3f} "
                f"[{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
        entry = {
            "frame_shape": shape,
            "strong_peaks_per_frame": float(np.mean([r["strong"] for r in records])),
            "weak_peaks_per_frame": float(np.mean([r["weak"] for r in records])),
            "accuracy": model.accuracy(frames, mean_frame_f1=True),
            "recall_by_i_over_sigma": {
                k: {"strong": n, "found": m, "recall": m / n if n else None} for k, (n, m) in ios.items()
            },
            "false_positives_" + reference: fps,
            "simulation_seconds": sim_seconds,
            "frames": records,
        }
        if (pf8_entry := baseline.finish()) is not None:
            entry["peakfinder8"] = pf8_entry
        report["per_geometry"][geometry_name] = entry
        totals.add(model)
        print(f"{geometry_name}: {model.summary()}{baseline.summary()}", flush=True)
    report["overall"] = {"accuracy": totals.accuracy(mean_frame_f1=True)}
    if (pf8_overall := baseline.overall()) is not None:
        report["overall"]["peakfinder8"] = pf8_overall
    report["wall_seconds"] = time.perf_counter() - started
    return report


def robustness_table(report: dict) -> str:
    """Markdown: per detector strong peaks/frame, P, R, F1 of the reference dtype (F1 of the others),
    then recall per I/sigma bin and where the false positives lie."""
    dtypes = list(report["overall"]["accuracy"])
    ref = report["reference_dtype"]

    def ref_cell(metric: str) -> Callable[[dict], str]:
        return lambda entry: f"{entry['accuracy'][ref][metric]:.3f}"

    def mean_f1_cell(entry: dict) -> str:
        mean = entry["accuracy"][ref].get("mean_frame_f1")
        return "—" if mean is None else f"{mean:.3f}"

    lines = detector_table(
        report,
        [
            ("strong peaks/frame", per_frame_cell("strong_peaks_per_frame")),
            ("weak/frame", per_frame_cell("weak_peaks_per_frame")),
            (f"P {ref}", ref_cell("precision")),
            (f"R {ref}", ref_cell("recall")),
            (f"F1 {ref}", ref_cell("f1")),
            ("mean frame F1", mean_f1_cell),
            *[(f"F1 {d}", lambda entry, d=d: f"{entry['accuracy'][d]['f1']:.3f}") for d in dtypes[1:]],
        ],
    )
    bins = list(next(iter(report["per_geometry"].values()))["recall_by_i_over_sigma"])
    lines += [
        "",
        (
            f"Recall of strong peaks by integrated I/sigma ({ref}; strong peaks in brackets), and where "
            "the false positives lie (hot pixel / within 2 px of a spot too dim to count / within "
            "5 px of a strong spot / beam-stop edge / jet streak / panel edge / common-mode block or "
            "ASIC edge / elsewhere; each counted once, in this order):"
        ),
        "",
        "| detector | "
        + " | ".join(f"I/σ {b}" for b in bins)
        + " | "
        + " | ".join(f"FP {c.replace('_', ' ')}" for c in FP_CATEGORIES)
        + " |",
        "|" + " --- |" * (len(bins) + len(FP_CATEGORIES) + 1),
    ]
    for name, entry in report["per_geometry"].items():
        cells = []
        for b in bins:
            e = entry["recall_by_i_over_sigma"][b]
            cells.append("—" if not e["strong"] else f"{e['recall']:.3f} ({e['strong']})")
        fp = entry["false_positives_" + ref]
        cells += [str(fp[c]) for c in FP_CATEGORIES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        f"\n{report['frames_per_geometry']} frames per detector of the independent simulator "
        f"(`peaknet_serve/sim/independent.py`, seed {report['seed']}), {report['input']}, "
        f"{mask_note(report)}, on {report['device_name']}; matches within {report['match_radius_px']} px; strong: "
        f"{report['strong_rule']}. Weights SHA-256 {report['weights_sha256_16']}…; "
        f"wall time {report['wall_seconds']:.0f} s."
    )
    if "peakfinder8" in report:
        lines.append(
            tuning_note(report) + ". Milliseconds per frame: the model end to end on the device above, peakfinder8 "
            "inside its worker on one CPU core."
        )
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = report["reference_dtype"]
    dtypes = list(report["overall"]["accuracy"])
    geometries = list(report["per_geometry"])
    groups = geometries + ["overall"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))

    def accuracy(group: str) -> dict:
        return report["overall"]["accuracy"] if group == "overall" else report["per_geometry"][group]["accuracy"]

    ax = axes[0]
    metrics = [(d, m) for d in dtypes for m in ("precision", "recall", "f1")]
    width = 0.8 / len(metrics)
    x = np.arange(len(groups))
    for i, (d, m) in enumerate(metrics):
        ax.bar(
            x + (i - (len(metrics) - 1) / 2) * width,
            [accuracy(g)[d][m] for g in groups],
            width,
            label=m if len(dtypes) == 1 else f"{m} {d}",
        )
    ax.set_xticks(x, groups, rotation=30)
    ax.set_ylim(0, 1.0)
    ax.axhline(0.9, color="k", lw=0.6, ls="--")
    ax.set_title(f"precision / recall / F1 ({ref})" if len(dtypes) == 1 else "precision / recall / F1")
    ax.legend(fontsize=7)

    ax = axes[1]
    bins = list(next(iter(report["per_geometry"].values()))["recall_by_i_over_sigma"])
    for g in geometries:
        e = report["per_geometry"][g]["recall_by_i_over_sigma"]
        ax.plot(
            range(len(bins)), [np.nan if e[b]["recall"] is None else e[b]["recall"] for b in bins], marker="o", label=g
        )
    ax.set_xticks(range(len(bins)), bins)
    ax.set_xlabel("integrated I/σ of strong truth peaks")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"recall by spot strength ({ref})")
    ax.legend(fontsize=7)

    ax = axes[2]
    for g in geometries:
        recs = report["per_geometry"][g]["frames"]
        ax.scatter(
            [r["background_photons"] for r in recs],
            [r[ref]["f1"] for r in recs],
            s=[8 + 4 * np.sqrt(r["strong"]) for r in recs],
            alpha=0.8,
            label=g,
        )
    ax.set_xscale("log")
    ax.set_xlabel("background maximum (photons/pixel)")
    ax.set_ylabel("frame F1")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("per-frame F1 vs background (size: strong peaks)")
    ax.legend(fontsize=7)
    save_figure(
        fig,
        f"PeakNet on frames of an independent simulator ({report['frames_per_geometry']} per detector, "
        f"{report['device_name']})",
        path,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = evaluation_parser(
        __doc__,
        DETECTOR_NAMES,
        frames=8,
        frames_help="frames per detector",
        dtypes=["float32"],
        dtypes_help="model precisions; the first is the reference for the diagnostics",
        seed=31337,
    )
    p.add_argument("--first-frame", type=int, default=0, help="index of the first frame of each detector")
    p.add_argument("--uint16", action="store_true", help="feed uint16 frames instead of float32 ADU")
    add_peakfinder8_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for robustness.{json,md,png}")
    args = p.parse_args(argv)
    check_baseline_only(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run(options: ModelOptions, worker: Peakfinder8 | None) -> dict:
        return evaluate(options, args.uint16, args.first_frame, worker, args.pf8_tune_frames, args.pf8_tune_first_frame)

    return run_evaluation("peaknet-evaluate-independent", args, argv, "robustness", run, robustness_table, plot_report)


if __name__ == "__main__":
    raise SystemExit(main())
