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
import contextlib
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from peaknet_serve.eval.evaluate import (
    DEFAULT_CONFIG,
    DTYPES,
    add_peakfinder8_args,
    agreement_counts,
    agreement_summary,
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
from peaknet_serve.sim.patternsim import (
    LYSOZYME_CELL,
    STRONG_I_OVER_SIGMA,
    WEAK_I_OVER_SIGMA,
    PatternSimFrame,
    build_frame,
    run_pattern_sim,
)
from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, DetectorGeometry, get_geometry
from peaknet_serve.sim.peaksim.matching import MATCH_RADIUS, MatchCounts, match_peaks

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
    config: Path,
    geometries: list[str],
    frames: int,
    dtypes: list[str],
    device: torch.device,
    seed: int,
    threshold: float | None,
    max_batch: int,
    min_size: float,
    max_size: float,
    program: str,
    cache: Path | None,
    peakfinder8: Peakfinder8 | None = None,
    pf8_tune_frames: int = 2,
    cell: str = LYSOZYME_CELL,
) -> dict:
    finders = {name: evaluation_finder(config, name, device, threshold, max_batch) for name in dtypes}
    reference = dtypes[0] if dtypes else "float32"  # no dtypes: peakfinder8 alone
    report: dict = {
        "simulator": "CrystFEL pattern_sim (noise-free spots) + peaknet_serve.sim.patternsim (detector)",
        "config": str(config),
        "device": str(device),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threshold": threshold,
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
    if peakfinder8 is not None:
        report["peakfinder8"] = {
            **peakfinder8.version(),
            "tune_frames": pf8_tune_frames,
            "tune_first_frame": 0,
            "grid_points": len(DEFAULT_GRID),
        }
    totals = {name: MatchCounts() for name in dtypes}
    pf8_total = MatchCounts()
    started = time.perf_counter()
    for geometry_name in geometries:
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
        tuned = None
        if peakfinder8 is not None:
            tuned = tune(peakfinder8, [(pf8_frame(f, geometry), _scorer(f)) for f in tuning])
            print(f"{geometry_name}: peakfinder8 tuned ({describe(tuned.as_dict()['best'])})", flush=True)
        counts = {name: MatchCounts() for name in dtypes}
        agree = {name: {"matched": 0, "only_reference": 0, "only_other": 0} for name in dtypes[1:]}
        seconds = dict.fromkeys(dtypes, 0.0)
        pf8_counts, pf8_ms, records = MatchCounts(), [], []
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
            found = {}
            for name in dtypes:
                t0 = time.perf_counter()
                found[name] = find_frame_peaks(finders[name], frame.adu)
                seconds[name] += time.perf_counter() - t0
                result = match_peaks(found[name], frame.strong, frame.weak)
                counts[name] = counts[name] + result
                record[name] = result.as_dict()
            for name in dtypes[1:]:
                for key, value in agreement_counts(found[reference], found[name]).items():
                    agree[name][key] += value
            if tuned is not None:
                result, found_pf8 = score(peakfinder8, pf8_frame(frame, geometry), _scorer(frame), tuned.best)
                pf8_counts = pf8_counts + result
                pf8_ms.append(found_pf8.ms)
                record["peakfinder8"] = result.as_dict()
            records.append(record)
            shown = reference if reference in record else "peakfinder8"
            r = record[shown]
            print(
                f"{geometry_name} frame {index}: strong {record['strong']}, {shown} P={r['precision']:.3f} "
                f"R={r['recall']:.3f} F1={r['f1']:.3f}"
                + (f"; peakfinder8 F1={record['peakfinder8']['f1']:.3f}" if tuned is not None else "")
                + f" [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
        entry = {
            "frame_shape": list(geometry.frame_shape),
            "distance_m": detector_distance(geometry),
            "strong_peaks_per_frame": float(np.mean([r["strong"] for r in records])) if records else 0.0,
            "accuracy": {
                name: {
                    **counts[name].as_dict(),
                    "seconds": seconds[name],
                    "ms_per_frame": 1e3 * seconds[name] / max(len(scored), 1),
                }
                for name in dtypes
            },
            "agreement_with_" + reference: {name: agreement_summary(agree[name]) for name in dtypes[1:]},
            "pattern_sim_seconds": sim_seconds,
            "frames": records,
        }
        if tuned is not None:
            entry["peakfinder8"] = baseline_entry(tuned, pf8_counts, pf8_ms)
            pf8_total = pf8_total + pf8_counts
        report["per_geometry"][geometry_name] = entry
        for name in dtypes:
            totals[name] = totals[name] + counts[name]
    report["overall"] = {"accuracy": {name: totals[name].as_dict() for name in dtypes}}
    if peakfinder8 is not None:
        report["overall"]["peakfinder8"] = {"accuracy": pf8_total.as_dict()}
    report["wall_seconds"] = time.perf_counter() - started
    return report


def _scorer(frame: PatternSimFrame):
    return lambda found: match_peaks(found, frame.strong, frame.weak)


def patternsim_table(report: dict) -> str:
    """Markdown: per detector and overall, F1 (P / R) per dtype and of peakfinder8, agreement, ms/frame."""
    dtypes = list(report["overall"]["accuracy"])
    ref = report["reference_dtype"]
    baseline = "peakfinder8" in report
    header = [
        "detector",
        "strong peaks/frame",
        *[f"F1 {d} (P / R)" for d in dtypes],
        *[f"{d} = {ref}" for d in dtypes[1:]],
        *(["F1 peakfinder8 (P / R)", f"ms/frame {ref}", "ms/frame peakfinder8"] if baseline else []),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, entry in [*report["per_geometry"].items(), ("overall", report["overall"])]:
        cells = [
            f"**{name}**" if name == "overall" else name,
            f"{entry['strong_peaks_per_frame']:.1f}" if "strong_peaks_per_frame" in entry else "—",
        ]
        for d in dtypes:
            a = entry["accuracy"][d]
            cells.append(f"{a['f1']:.3f} ({a['precision']:.3f} / {a['recall']:.3f})")
        agreement = entry.get("agreement_with_" + ref, {})
        cells += [f"{100 * agreement[d]['agreement']:.2f}%" if d in agreement else "—" for d in dtypes[1:]]
        if baseline:
            pf8_cells = baseline_cells(entry.get("peakfinder8"))
            cells += [pf8_cells[0], model_ms(entry["accuracy"][ref], report["frames_per_geometry"]), pf8_cells[1]]
        lines.append("| " + " | ".join(cells) + " |")
    lo, hi = report["crystal_size_nm"]
    cell = "lysozyme cell" if report.get("cell", LYSOZYME_CELL) == LYSOZYME_CELL else "the --cell file's cell"
    threshold = "argmax" if report.get("threshold") is None else f"P(peak) >= {report['threshold']:g}"
    lines.append(
        f"\n{report['frames_per_geometry']} scored frames per detector (after {report['tune_frames']} "
        f"tuning frames) of CrystFEL pattern_sim crystals of {lo:g}-{hi:g} nm ({cell}, "
        f"{report['photon_energy_ev']:g} eV), seed {report['seed']}, model peaks by {threshold}, on "
        f"{report['device_name']}; matches "
        f"within {report['match_radius_px']} px; strong: {report['strong_rule']}."
    )
    if baseline:
        lines.append(
            f"peakfinder8: OM {report['peakfinder8']['om']}, best pooled F1 over "
            f"{report['peakfinder8']['grid_points']} parameter sets on the tuning frames: "
            + "; ".join(
                f"{g} {describe(e['peakfinder8']['best'])}"
                for g, e in report["per_geometry"].items()
                if "peakfinder8" in e
            )
            + "."
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="PeakNet YAML (public pipeline layout)")
    p.add_argument("--geometries", nargs="+", default=sorted(GEOMETRIES), choices=sorted(GEOMETRIES))
    p.add_argument("--frames", type=int, default=6, help="scored frames per detector")
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32"],
        choices=list(DTYPES),
        help="the first is the reference for agreement",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=4711)
    p.add_argument("--threshold", type=float, default=None, help="P(peak) threshold; default argmax")
    p.add_argument("--max-batch", type=int, default=16, help="panels per forward pass")
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
            args.min_size,
            args.max_size,
            args.pattern_sim,
            args.cache,
            finder,
            args.pf8_tune_frames,
            args.cell.read_text() if args.cell is not None else LYSOZYME_CELL,
        )
    command = " ".join(["peaknet-evaluate-patternsim", *(argv if argv is not None else sys.argv[1:])])
    report["command"] = command
    if args.baseline_only:
        (args.out / "patternsim_peakfinder8.json").write_text(json.dumps(report, indent=1))
        return 0
    (args.out / "patternsim.json").write_text(json.dumps(report, indent=1))
    (args.out / "patternsim.md").write_text(f"{patternsim_table(report)}\n\nReproduce: `{command}`\n")
    print(json.dumps(report["overall"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
