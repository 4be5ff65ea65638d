"""Accuracy of a PeakNet, and of a tuned peakfinder8, on frames whose spots come from CrystFEL's pattern_sim.

For every detector, :func:`peaknet_serve.sim.patternsim.run_pattern_sim` simulates
``--pf8-tune-frames + --frames`` randomly oriented crystals of ``--min-size`` to ``--max-size`` nm
(lysozyme's cell; 150-400 nm by default: sharp, near single-pixel spots) and
:func:`peaknet_serve.sim.patternsim.build_frame` turns each into a detector frame (photons,
background, noise, gain, saturation, mask) with ``np.random.default_rng([--seed, detector_index,
frame_index])``. The first ``--pf8-tune-frames`` frames tune peakfinder8 by grid search; the rest
are scored for the model in each precision and for peakfinder8, by the rule of
:func:`peaknet_serve.sim.peaksim.matching.match_peaks` (strong spots within 2 px; detections near
weak spots count neither way). Peak lists of each reduced precision are compared with the first
precision's (matched within 1 px / union).

pattern_sim must be on ``PATH`` (``source ../shared/tools/crystfel/env.sh``) or given by
``--pattern-sim``; ``--cache`` keeps its noise-free images, so a second model is scored on the
same frames without running it again. Writes ``patternsim.json`` and ``patternsim.md``.

Example::

    peaknet-evaluate-patternsim --frames 6 --dtypes float32 bfloat16 --peakfinder8 --cache /tmp/ps \\
        --out benchmarks/results
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

from peaknet_serve.eval.peakfinder8 import Peakfinder8, Pf8Frame
from peaknet_serve.eval.runner import (
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
    reference_dtype,
    run_evaluation,
    tuned_parameters,
)
from peaknet_serve.sim.patternsim import (
    LYSOZYME_CELL,
    STRONG_I_OVER_SIGMA,
    WEAK_I_OVER_SIGMA,
    PatternSimFrame,
    build_frame,
    run_pattern_sim,
)
from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, DetectorGeometry, get_geometry
from peaknet_serve.sim.peaksim.matching import MATCH_RADIUS, match_peaks

PHOTON_ENERGY_EV = 9500.0
DETECTOR_INDEX = {name: i for i, name in enumerate(sorted(GEOMETRIES))}


def detector_distance(geometry: DetectorGeometry) -> float:
    """Camera length (m): 40% into the detector's usual range."""
    lo, hi = geometry.distance_range
    return lo + 0.4 * (hi - lo)


def spot_images(
    geometry: DetectorGeometry,
    n_frames: int,
    min_size: float,
    max_size: float,
    program: str,
    cache: Path | None,
    cell: str = LYSOZYME_CELL,
) -> list[np.ndarray]:
    """pattern_sim's noise-free images of ``geometry``, from ``cache`` when it holds them."""
    cell_key = hashlib.blake2b(cell.encode(), digest_size=4).hexdigest()
    key = f"{geometry.name}_{n_frames}_{min_size:g}-{max_size:g}nm_{cell_key}.npz"
    if cache is not None and (cache / key).is_file():
        with np.load(cache / key) as stored:
            return [stored[f"frame{i}"] for i in range(n_frames)]
    images = run_pattern_sim(
        geometry,
        n_frames,
        detector_distance(geometry),
        PHOTON_ENERGY_EV,
        min_size,
        max_size,
        program=program,
        cell=cell,
    )
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        # Values below 1e-6 of the brightest pixel carry no photons after any scaling: zero them so the file packs.
        np.savez_compressed(
            cache / key,
            **{f"frame{i}": np.where(im > 1e-6 * im.max(), im, 0).astype(np.float32) for i, im in enumerate(images)},
        )
    return images


def pf8_frame(frame: PatternSimFrame, geometry: DetectorGeometry) -> Pf8Frame:
    """A test frame as peakfinder8 gets it (beam at the nominal centre)."""
    x, y = geometry.pixel_lab_xy()
    return Pf8Frame(frame.adu, frame.mask, np.hypot(x, y) / geometry.pixel_size, frame.settings.gain)


def evaluate(
    options: ModelOptions,
    min_size: float,
    max_size: float,
    program: str,
    cache: Path | None,
    peakfinder8: Peakfinder8 | None = None,
    pf8_tune_frames: int = 2,
    cell: str = LYSOZYME_CELL,
) -> dict:
    finders = options.finders()
    config, frames, dtypes, seed = options.config, options.frames, options.dtypes, options.seed
    reference = reference_dtype(dtypes)
    report: dict = {
        "simulator": "CrystFEL pattern_sim (noise-free spots) + peaknet_serve.sim.patternsim (detector)",
        "config": str(config),
        **device_fields(options.device),
        "threshold": options.threshold,
        "model_bad_pixel_mask": options.bad_pixel_mask,
        "match_radius_px": MATCH_RADIUS,
        "frames_per_geometry": frames,
        "tune_frames": pf8_tune_frames,
        "seed": seed,
        "crystal_size_nm": [min_size, max_size],
        "photon_energy_ev": PHOTON_ENERGY_EV,
        "reference_dtype": reference,
        "cell": cell,
        "strong_rule": f"I/sigma >= {STRONG_I_OVER_SIGMA:g}, weak >= {WEAK_I_OVER_SIGMA:g} "
        "(peaknet_serve.sim.patternsim.spot_truth)",
        "per_geometry": {},
    }
    baseline = BaselineScores(peakfinder8)
    if (header := baseline.header(pf8_tune_frames, 0)) is not None:
        report["peakfinder8"] = header
    totals = ModelScores(dtypes)
    started = time.perf_counter()
    for geometry_name in options.geometries:
        geometry = get_geometry(geometry_name)
        t0 = time.perf_counter()
        images = spot_images(geometry, pf8_tune_frames + frames, min_size, max_size, program, cache, cell)
        sim_seconds = time.perf_counter() - t0
        built = [
            build_frame(
                np.random.default_rng([seed, DETECTOR_INDEX[geometry_name], i]),
                geometry,
                image,
                detector_distance(geometry),
                12398.419843 / PHOTON_ENERGY_EV,
            )
            for i, image in enumerate(images)
        ]
        tuning, scored = built[:pf8_tune_frames], built[pf8_tune_frames:]
        baseline.start(geometry_name, ((pf8_frame(f, geometry), _scorer(f)) for f in tuning))
        model = ModelScores(dtypes)
        records = []
        for index, frame in enumerate(scored, start=pf8_tune_frames):
            record = {
                "frame": index,
                "strong": len(frame.strong),
                "weak": len(frame.weak),
                "brightest_photons": frame.settings.brightest_photons,
                "background_photons": frame.settings.background,
                "gain": frame.settings.gain,
                "read_noise_photons": frame.settings.read_noise,
            }
            model.score(finders, frame.adu, _scorer(frame), record=record, good_pixels=options.good_pixels(frame.mask))
            if baseline.active:
                baseline.score(pf8_frame(frame, geometry), _scorer(frame), record)
            records.append(record)
            shown = reference if reference in record else "peakfinder8"
            r = record[shown]
            print(
                f"{geometry_name} frame {index}: strong {record['strong']}, {shown} P={r['precision']:.3f} "
                f"R={r['recall']:.3f} F1={r['f1']:.3f}"
                + (f"; peakfinder8 F1={record['peakfinder8']['f1']:.3f}" if baseline.active else "")
                + f" [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
        entry = {
            "frame_shape": list(geometry.frame_shape),
            "distance_m": detector_distance(geometry),
            "strong_peaks_per_frame": float(np.mean([r["strong"] for r in records])) if records else 0.0,
            "accuracy": model.accuracy(len(scored)),
            "agreement_with_" + reference: model.agreement(),
            "pattern_sim_seconds": sim_seconds,
            "frames": records,
        }
        if (pf8_entry := baseline.finish()) is not None:
            entry["peakfinder8"] = pf8_entry
        report["per_geometry"][geometry_name] = entry
        totals.add(model)
    report["overall"] = {"accuracy": totals.accuracy()}
    if (pf8_overall := baseline.overall()) is not None:
        report["overall"]["peakfinder8"] = pf8_overall
    report["wall_seconds"] = time.perf_counter() - started
    return report


def _scorer(frame: PatternSimFrame):
    return lambda found: match_peaks(found, frame.strong, frame.weak)


def patternsim_table(report: dict) -> str:
    """Markdown: per detector and overall, F1 (P / R) per dtype and of peakfinder8, agreement, ms/frame."""
    dtypes = list(report["overall"]["accuracy"])
    lines = detector_table(
        report,
        [
            ("strong peaks/frame", per_frame_cell("strong_peaks_per_frame")),
            *f1_columns(dtypes),
            *agreement_columns(dtypes, report["reference_dtype"]),
        ],
    )
    lo, hi = report["crystal_size_nm"]
    cell = "lysozyme cell" if report.get("cell", LYSOZYME_CELL) == LYSOZYME_CELL else "the --cell file's cell"
    threshold = "argmax" if report.get("threshold") is None else f"P(peak) >= {report['threshold']:g}"
    lines.append(
        f"\n{report['frames_per_geometry']} scored frames per detector (after {report['tune_frames']} "
        f"tuning frames) of CrystFEL pattern_sim crystals of {lo:g}-{hi:g} nm ({cell}, "
        f"{report['photon_energy_ev']:g} eV), seed {report['seed']}, model peaks by {threshold}, {mask_note(report)}, on "
        f"{report['device_name']}; matches "
        f"within {report['match_radius_px']} px; strong: {report['strong_rule']}."
    )
    if "peakfinder8" in report:
        lines.append(
            f"peakfinder8: OM {report['peakfinder8']['om']}, best pooled F1 over "
            f"{report['peakfinder8']['grid_points']} parameter sets on the tuning frames: {tuned_parameters(report)}."
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = evaluation_parser(
        __doc__,
        GEOMETRIES,
        frames=6,
        frames_help="scored frames per detector",
        dtypes=["float32"],
        dtypes_help="the first is the reference for agreement",
        seed=4711,
    )
    p.add_argument("--min-size", type=float, default=150.0, help="smallest crystal, nm")
    p.add_argument("--max-size", type=float, default=400.0, help="largest crystal, nm")
    p.add_argument(
        "--cell",
        type=Path,
        default=None,
        help="CrystFEL unit cell file of the crystals (default: lysozyme, P4(3)2(1)2, 79.1 x 79.1 x 37.9 A)",
    )
    p.add_argument("--pattern-sim", default="pattern_sim", help="CrystFEL 0.10's pattern_sim program")
    p.add_argument("--cache", type=Path, default=None, help="folder keeping pattern_sim's images between runs")
    add_peakfinder8_args(p)
    p.set_defaults(pf8_tune_frames=2)
    p.add_argument("--out", type=Path, required=True, help="folder for patternsim.{json,md}")
    args = p.parse_args(argv)
    check_baseline_only(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run(options: ModelOptions, worker: Peakfinder8 | None) -> dict:
        return evaluate(
            options,
            args.min_size,
            args.max_size,
            args.pattern_sim,
            args.cache,
            worker,
            args.pf8_tune_frames,
            args.cell.read_text() if args.cell is not None else LYSOZYME_CELL,
        )

    return run_evaluation("peaknet-evaluate-patternsim", args, argv, "patternsim", run, patternsim_table)


if __name__ == "__main__":
    raise SystemExit(main())
