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
import contextlib
import hashlib
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from peaknet_serve.checkpoint import load_config
from peaknet_serve.eval.evaluate import (
    DEFAULT_CONFIG,
    DTYPES,
    add_peakfinder8_args,
    check_baseline_only,
    evaluation_finder,
    find_frame_peaks,
)
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
from peaknet_serve.sim.peaksim.matching import (
    MATCH_RADIUS,
    MatchCounts,
    assign_within_radius,
    match_peaks,
)

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
    peakfinder8: Peakfinder8 | None = None,
    pf8_tune_frames: int = 3,
    pf8_tune_first_frame: int = 5000,
) -> dict:
    finders = {name: evaluation_finder(config, name, device, threshold, max_batch) for name in dtypes}
    reference = dtypes[0] if dtypes else "float32"  # no dtypes: peakfinder8 alone
    weights, digest = weights_digest(config)
    report: dict = {
        "simulator": "peaknet_serve/sim/independent.py",
        "config": str(config),
        "weights": weights,
        "weights_sha256_16": digest,
        "device": str(device),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threshold": threshold,
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
    if peakfinder8 is not None:
        report["peakfinder8"] = {
            **peakfinder8.version(),
            "tune_frames": pf8_tune_frames,
            "tune_first_frame": pf8_tune_first_frame,
            "grid_points": len(DEFAULT_GRID),
        }
    pf8_total = MatchCounts()
    totals = {name: MatchCounts() for name in dtypes}
    all_frame_f1 = {name: [] for name in dtypes}
    started = time.perf_counter()
    for geometry_name in geometries:
        counts = {name: MatchCounts() for name in dtypes}
        frame_f1 = {name: [] for name in dtypes}
        seconds = {name: 0.0 for name in dtypes}
        sim_seconds = 0.0
        ios = {bin_label(lo, hi): [0, 0] for lo, hi in itertools.pairwise(IOS_BINS)}
        fps = dict.fromkeys(FP_CATEGORIES, 0)
        records, shape = [], None
        tuned, pf8_counts, pf8_ms = None, MatchCounts(), []
        if peakfinder8 is not None:
            tuning = [
                simulate(geometry_name, frame_rng(seed, geometry_name, i))
                for i in range(pf8_tune_first_frame, pf8_tune_first_frame + pf8_tune_frames)
            ]
            tuned = tune(peakfinder8, [(pf8_frame(f, as_uint16), _scorer(f)) for f in tuning])
            print(f"{geometry_name}: peakfinder8 tuned ({describe(tuned.as_dict()['best'])})", flush=True)
        for f_index in range(first_frame, first_frame + frames):
            t0 = time.perf_counter()
            frame = simulate(geometry_name, frame_rng(seed, geometry_name, f_index))
            sim_seconds += time.perf_counter() - t0
            shape = list(frame.adu.shape)
            raw = frame.uint16 if as_uint16 else frame.adu
            strong, weak = frame.strong_points, frame.weak_points
            record = {"frame": f_index, **frame_summary(frame)}
            if tuned is not None:
                result, found_pf8 = score(peakfinder8, pf8_frame(frame, as_uint16), _scorer(frame), tuned.best)
                pf8_counts = pf8_counts + result
                pf8_ms.append(found_pf8.ms)
                record["peakfinder8"] = result.as_dict()
            for name in dtypes:
                t0 = time.perf_counter()
                found = find_frame_peaks(finders[name], raw)
                seconds[name] += time.perf_counter() - t0
                result = match_peaks(found, strong, weak)
                counts[name] = counts[name] + result
                frame_f1[name].append(result.f1)
                record[name] = result.as_dict()
                if name == reference:
                    for key, (n, k) in recall_by_ios(frame, found).items():
                        ios[key][0] += n
                        ios[key][1] += k
                    for key, value in false_positive_breakdown(frame, found).items():
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
        report["per_geometry"][geometry_name] = {
            "frame_shape": shape,
            "strong_peaks_per_frame": float(np.mean([r["strong"] for r in records])),
            "weak_peaks_per_frame": float(np.mean([r["weak"] for r in records])),
            "accuracy": {
                name: {
                    **counts[name].as_dict(),
                    "mean_frame_f1": float(np.mean(frame_f1[name])),
                    "seconds": seconds[name],
                    "ms_per_frame": 1e3 * seconds[name] / max(frames, 1),
                }
                for name in dtypes
            },
            "recall_by_i_over_sigma": {
                k: {"strong": n, "found": m, "recall": m / n if n else None} for k, (n, m) in ios.items()
            },
            "false_positives_" + reference: fps,
            "simulation_seconds": sim_seconds,
            "frames": records,
        }
        if tuned is not None:
            report["per_geometry"][geometry_name]["peakfinder8"] = baseline_entry(tuned, pf8_counts, pf8_ms)
            pf8_total = pf8_total + pf8_counts
        for name in dtypes:
            totals[name] = totals[name] + counts[name]
            all_frame_f1[name] += frame_f1[name]
        print(
            f"{geometry_name}: "
            + ", ".join(
                f"{n} F1={counts[n].f1:.4f} (P={counts[n].precision:.4f} R={counts[n].recall:.4f})" for n in dtypes
            )
            + (
                f"; peakfinder8 F1={pf8_counts.f1:.4f} (P={pf8_counts.precision:.4f} R={pf8_counts.recall:.4f})"
                if tuned is not None
                else ""
            ),
            flush=True,
        )
    report["overall"] = {
        "accuracy": {
            name: {**totals[name].as_dict(), "mean_frame_f1": float(np.mean(all_frame_f1[name]))} for name in dtypes
        }
    }
    if peakfinder8 is not None:
        report["overall"]["peakfinder8"] = {"accuracy": pf8_total.as_dict()}
    report["wall_seconds"] = time.perf_counter() - started
    return report


def robustness_table(report: dict) -> str:
    """Markdown: per detector strong peaks/frame, P, R, F1 of the reference dtype (F1 of the others),
    then recall per I/sigma bin and where the false positives lie."""
    dtypes = list(report["overall"]["accuracy"])
    ref = report["reference_dtype"]
    others = dtypes[1:]
    baseline = "peakfinder8" in report
    header = [
        "detector",
        "strong peaks/frame",
        "weak/frame",
        f"P {ref}",
        f"R {ref}",
        f"F1 {ref}",
        "mean frame F1",
        *[f"F1 {d}" for d in others],
        *(["F1 peakfinder8 (P / R)", f"ms/frame {ref}", "ms/frame peakfinder8"] if baseline else []),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    rows = list(report["per_geometry"].items()) + [("overall", report["overall"])]
    for name, entry in rows:
        a = entry["accuracy"][ref]
        cells = [
            f"**{name}**" if name == "overall" else name,
            f"{entry['strong_peaks_per_frame']:.1f}" if "strong_peaks_per_frame" in entry else "—",
            f"{entry['weak_peaks_per_frame']:.1f}" if "weak_peaks_per_frame" in entry else "—",
            f"{a['precision']:.3f}",
            f"{a['recall']:.3f}",
            f"{a['f1']:.3f}",
            f"{a['mean_frame_f1']:.3f}" if "mean_frame_f1" in a else "—",
            *[f"{entry['accuracy'][d]['f1']:.3f}" for d in others],
        ]
        if baseline:
            pf8_cells = baseline_cells(entry.get("peakfinder8"))
            cells += [pf8_cells[0], model_ms(a, report["frames_per_geometry"]), pf8_cells[1]]
        lines.append("| " + " | ".join(cells) + " |")
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
        f"(`peaknet_serve/sim/independent.py`, seed {report['seed']}), {report['input']}, on "
        f"{report['device_name']}; matches within {report['match_radius_px']} px; strong: "
        f"{report['strong_rule']}. Weights SHA-256 {report['weights_sha256_16']}…; "
        f"wall time {report['wall_seconds']:.0f} s."
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
            + ". Milliseconds per frame: the model end to end on the device above, peakfinder8 inside "
            "its worker on one CPU core."
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
    fig.suptitle(
        f"PeakNet on frames of an independent simulator ({report['frames_per_geometry']} per detector, "
        f"{report['device_name']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="PeakNet YAML (public pipeline layout)")
    p.add_argument("--geometries", nargs="+", default=sorted(DETECTOR_NAMES), choices=sorted(DETECTOR_NAMES))
    p.add_argument("--frames", type=int, default=8, help="frames per detector")
    p.add_argument("--first-frame", type=int, default=0, help="index of the first frame of each detector")
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32"],
        choices=list(DTYPES),
        help="model precisions; the first is the reference for the diagnostics",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=31337)
    p.add_argument("--threshold", type=float, default=None, help="P(peak) threshold; default argmax")
    p.add_argument("--max-batch", type=int, default=16, help="panels per forward pass")
    p.add_argument("--uint16", action="store_true", help="feed uint16 frames instead of float32 ADU")
    add_peakfinder8_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for robustness.{json,md,png}")
    args = p.parse_args(argv)
    check_baseline_only(p, args)
    return args


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
            finder,
            args.pf8_tune_frames,
            args.pf8_tune_first_frame,
        )
    command = " ".join(["peaknet-evaluate-independent", *(argv if argv is not None else sys.argv[1:])])
    report["command"] = command
    if args.baseline_only:
        (args.out / "robustness_peakfinder8.json").write_text(json.dumps(report, indent=1))
        return 0
    (args.out / "robustness.json").write_text(json.dumps(report, indent=1))
    plot_report(report, args.out / "robustness.png")
    (args.out / "robustness.md").write_text(f"{robustness_table(report)}\n\nReproduce: `{command}`\n")
    print(json.dumps(report["overall"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
