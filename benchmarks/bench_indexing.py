"""Indexing with CrystFEL in the loop: the server's peaks against CrystFEL's own peakfinder8 and the truth.

For every detector (ePix10k2M, Jungfrau 4M, CSPAD, Rayonix) and simulator, frames of one known crystal
(lysozyme, P4(3)2(1)2 cell 79.1 79.1 38.0 A) are simulated in the experiment the shipped geometry file
describes (its photon energy and distance, the beam on the nominal centre), in random orientations:

* ``peaksim``: our simulator, via :func:`peaknet_serve.eval.indexing.simulate_known_cell`
  (4-D ``(N, P, H, W)`` files, ``(N, H, W)`` for Rayonix, with mask and truth peaks);
* ``pattern_sim``: CrystFEL 0.10.2's independent simulator (one slab per file, gathered into a
  4-D run file; no truth peak list, no mask).

Each run goes through a real TorchServe serving the bundled model (started here on free loopback
ports unless ``--url`` names one): ``peaknet-peakfind`` writes a data-bearing peak file, and a
direct ``POST`` of the frames with ``Accept: application/x-hdf5`` gives the peaks-only answer, which
:func:`~peaknet_serve.encode.cxi.attach_frames` joins to the frames. Then ``indexamajig`` indexes,
with TakeTwo and with asdf and otherwise default options, the frames through

* ``peakfind`` / ``post``: ``--peaks=cxi`` on the server's files, at its default threshold (the headline);
* ``post T=…`` (with ``--thresholds``): the frames posted again with ``X-Peak-Threshold: T``, and the
  ``server tuned`` row per indexer: the best of the default and these thresholds on these very frames,
  chosen exactly as peakfinder8's grid value is (:func:`best_of`);
* ``peakfinder8``: CrystFEL's own search (``--peaks=peakfinder8``) on the same frames (the peakfind
  file: same data, same mask), its ``--threshold``/``--min-snr`` tuned on these very frames for each
  indexer (the grid value that indexes most, :func:`best_of`);
* ``truth``: ``--peaks=cxi`` on the simulator's strong spots (peaksim only).

The server sees the frames alone by default; with ``--request-masks`` every request also carries the
run's bad-pixel mask (peaksim's, as the multipart part ``mask``; pattern_sim runs have none), so the
server, like peakfinder8, leaves the masked pixels out of its peaks. Its files then go to
``request-masks/`` beside the frames in ``--work``.

Reported per source: frames indexed, and how many of them have the true orientation (within 1 degree
after any re-indexing), CrystFEL's warnings about peak coordinates, and wall time.

    python -m benchmarks.bench_indexing --frames 8 --thresholds 0.35 0.45 --out benchmarks/results

CPU runs: the model runs on the CPU of the server; keep ``--frames`` small.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import requests
import yaml

from benchmarks.timing import command_line, markdown_table, progress
from peaknet_serve.clients import peakfind
from peaknet_serve.clients.client import PeakNetClient
from peaknet_serve.clients.payloads import encode_request
from peaknet_serve.clients.peakfind import file_mask
from peaknet_serve.encode.cxi import DATA_PATH, attach_frames
from peaknet_serve.eval.crystfel import crystfel_bin, run_indexamajig
from peaknet_serve.eval.indexing import (
    LYSOZYME,
    TRUTH_PATH,
    IndexingScore,
    score_run,
    simulate_known_cell,
    write_known_cell_run,
    write_truth_peak_file,
)
from peaknet_serve.geometry import nominal_setup, shipped_geometry_path, write_geometry
from peaknet_serve.launch.archive import build
from peaknet_serve.launch.server import (
    spawn_foreground,
    stop_foreground,
    torchserve_env,
    wait_ready,
    write_loopback_config,
)
from peaknet_serve.resources import BUNDLED_MODEL_CONFIG
from peaknet_serve.results import write_report
from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, DetectorGeometry, get_geometry

ROOT = Path(__file__).resolve().parents[1]
INDEXERS = ("taketwo", "asdf")
SIMULATORS = ("peaksim", "pattern_sim")
# pattern_sim: crystals of 150-300 nm, no fringes, 2 photons of background per pixel, a fluence that
# gives tens of spots on every detector with this cell.
PATTERN_SIM_OPTIONS = (
    "--random-orientation",
    "--no-fringes",
    "--background=2",
    "--min-size=150",
    "--max-size=300",
    "--nphotons=1e16",
)
# peakfinder8's grid, each ascending: the order of preference on ties (best_of)
PF8_MIN_SNR = (4.0, 5.0, 7.0)
PF8_THRESHOLD_SIGMAS = (3.0, 6.0)
# the plot's bars and their labels; the tuned rows are chosen on the frames they are scored on
PLOT_SOURCES = {
    "peakfind": "peakfind (default threshold)",
    "post": "post (default threshold)",
    "server tuned": "server, threshold tuned",
    "peakfinder8": "peakfinder8, tuned",
    "truth": "truth",
}


# --------------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------------


def peaksim_run(detector: DetectorGeometry, n_frames: int, folder: Path, seed: int) -> Path:
    if _finished_run(folder / "run.cxi", n_frames):
        return folder / "run.cxi"
    frames, reciprocal = simulate_known_cell(detector, n_frames, LYSOZYME, nominal_setup(detector), seed)
    return write_known_cell_run(folder / "run.cxi", frames, reciprocal, detector.name)


def pattern_sim_run(detector: DetectorGeometry, n_frames: int, folder: Path, cell: Path, bin_dir: Path) -> Path:
    """``n_frames`` pattern_sim images gathered into ``run.cxi``: ``(N, P, H, W)`` float32 and the
    true orientations (pattern_sim's ``/pattern_sim/[abc]star``, m^-1, in the lab frame)."""
    if _finished_run(folder / "run.cxi", n_frames):
        return folder / "run.cxi"
    geometry = folder / "pattern_sim.geom"
    geometry.write_text(
        write_geometry(
            detector, nominal_setup(detector), data_path="/data/data", multi_event=False, mask=False, peak_list=False
        )
    )
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            str(bin_dir / "pattern_sim"),
            "-g",
            str(geometry),
            "-p",
            str(cell),
            "-o",
            str(images / "ps"),
            "-n",
            str(n_frames),
            *PATTERN_SIM_OPTIONS,
        ],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pattern_sim failed: {done.stderr[-2000:]}")
    data, truth = [], []
    for i in range(1, n_frames + 1):
        with h5py.File(images / f"ps-{i}.h5", "r") as h5:
            data.append(h5["/data/data"][()].reshape(detector.frame_shape))
            truth.append(np.stack([h5[f"/pattern_sim/{axis}star"][()] for axis in "abc"]) * 1e-10)
    run = folder / "run.cxi"
    with h5py.File(run, "w") as h5:
        h5.create_dataset(DATA_PATH, data=np.stack(data).astype(np.float32), chunks=(1, 1, *detector.panel_shape))
        h5[TRUTH_PATH] = np.stack(truth).astype(np.float64)
    shutil.rmtree(images)
    return run


def _finished_run(run: Path, n_frames: int) -> bool:
    """A run file of ``n_frames`` frames and their truth from an earlier call in the same ``--work``."""
    try:
        with h5py.File(run, "r") as h5:
            return h5[DATA_PATH].shape[0] == n_frames and h5[TRUTH_PATH].shape[0] == n_frames
    except (OSError, KeyError):
        return False


def noise_sigma(run: Path) -> float:
    """Median over frames of the robust (MAD) spread of pixel values: peakfinder8's threshold scale."""
    with h5py.File(run, "r") as h5:
        data = h5[DATA_PATH]
        sigmas = []
        for i in range(data.shape[0]):
            values = np.asarray(data[i], np.float64).ravel()[::7]
            sigmas.append(1.4826 * np.median(np.abs(values - np.median(values))))
    return float(np.median(sigmas))


# --------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------


def start_server(workdir: Path, max_frames: int) -> tuple[subprocess.Popen, str]:
    """A TorchServe with the bundled model on free loopback ports; returns (process, inference URL)."""
    store = workdir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    config = workdir / "model-config.yaml"
    handler = {
        "config": "peaknet.yaml",
        "precision": "float32",
        "model_label": "peaknet-bundled",
        "max_batch_panels": 16,
        "warmup": False,
        "max_frames": max_frames,
        "max_pixels": max_frames * 8 * 512 * 1024,
        "max_body_bytes": max_frames * 8 * 512 * 1024 * 4 + 2**20,
    }
    config.write_text(
        yaml.safe_dump(
            {
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": 1,
                "maxBatchDelay": 1,
                "responseTimeout": 1200,
                "startupTimeout": 600,
                "handler": handler,
            }
        )
    )
    build(BUNDLED_MODEL_CONFIG, None, config, store)
    urls = write_loopback_config(
        workdir / "config.properties",
        store,
        ["peaknet"],
        {"max_request_size": str(2**30), "max_response_size": str(2**30)},
        token_auth=False,  # a private server on free loopback ports for this benchmark's own client
    )
    env = torchserve_env(workdir / "logs", {"TMPDIR": str(workdir), "TEMP": str(workdir)})
    process = spawn_foreground(workdir, env)
    wait_ready(urls["inference"], urls["management"], "peaknet", 600, alive=lambda: process.poll() is None)
    return process, urls["inference"]


REQUEST_MASKS_NOTE = (
    " Every request carried the run's bad-pixel mask (peaksim's; pattern_sim runs have none): the server "
    "left the masked pixels out of its peaks, as peakfinder8 does."
)


def post_answer(
    url: str,
    run: Path,
    out: Path,
    timeout_s: float,
    threshold: float | None = None,
    mask: np.ndarray | None = None,
) -> Path:
    """One ``POST`` of all frames of ``run`` for a CXI answer, joined to the frames (an earlier
    joined answer at ``out`` is kept, so give each ``threshold`` and mask choice its own ``out``).

    ``threshold``: sent as ``X-Peak-Threshold`` (the P(peak) a pixel must reach); None: the server's
    default. ``mask``: bool good pixels, (P, H, W) or (N, P, H, W), sent as the part ``mask`` of a
    multipart request; None: the frames alone."""
    try:
        with h5py.File(out, "r") as h5:
            if h5.attrs.get("frames_included") == 1 and h5.attrs.get("complete"):
                return out
    except OSError:
        pass
    with h5py.File(run, "r") as h5:
        data = h5[DATA_PATH][()]
    frames = data if data.ndim == 4 else data[:, None]
    request = encode_request(frames, "raw", mask=mask)
    headers = {**request.headers, "Accept": "application/x-hdf5"}
    if threshold is not None:
        headers["X-Peak-Threshold"] = f"{threshold:g}"
    answer = requests.post(
        f"{url}/predictions/peaknet",
        data=request.body,
        headers=headers,
        timeout=timeout_s,
    )
    if answer.status_code != 200:
        raise RuntimeError(f"server answered {answer.status_code}: {answer.text[:300]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(answer.content)
    return attach_frames(out, run)


# --------------------------------------------------------------------------------------------
# one detector
# --------------------------------------------------------------------------------------------


def best_of(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The tuned setting of a grid of score rows (dicts with ``indexed`` and ``true_orientation``):
    the one that indexes most frames, then has most true orientations; ties go to the earlier row,
    so a grid is listed in the order of preference (peakfinder8: the lower threshold first; the
    server: its default first, then the lower threshold)."""
    return max(grid, key=lambda r: (r["indexed"], r["true_orientation"]))


def index_sources(
    run: Path,
    detector: DetectorGeometry,
    simulator: str,
    url: str,
    folder: Path,
    cell: Path,
    jobs: int,
    timeout_s: float,
    thresholds: tuple[float, ...] = (),
    request_masks: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Every peak source through both indexers: (result rows, peakfinder8 tuning rows, server
    threshold rows). ``thresholds``: ``X-Peak-Threshold`` values to post the frames at besides the
    default; with none, no ``server tuned`` row and no threshold rows. ``request_masks``: every
    request carries the run's bad-pixel mask (where it has one); the server's files then go to
    ``folder/request-masks``."""
    with h5py.File(run, "r") as h5:
        n_frames = h5[DATA_PATH].shape[0]
        truth = h5[TRUTH_PATH][()]
    found_mask = file_mask(run) if request_masks else None
    mask = None if found_mask is None else found_mask.rows(0, n_frames)
    if request_masks:
        folder = folder / "request-masks"
    geometry = shipped_geometry_path(detector.name)
    client = PeakNetClient(url, timeout_s=timeout_s)
    start = time.perf_counter()
    summary = peakfind.run(
        [run],
        folder / "peakfind",
        client.predict,
        frames_per_request=2,
        concurrency=1,
        show_progress=False,
        send_mask=request_masks,
    )
    if summary.totals()["files_failed"]:  # done now, or skipped: complete from an earlier run in --work
        raise RuntimeError(summary.format())
    peakfind_s = time.perf_counter() - start
    sources = {"peakfind": folder / "peakfind" / "run_peaks.cxi"}
    start = time.perf_counter()
    sources["post"] = post_answer(url, run, folder / "post" / "answer.cxi", timeout_s, mask=mask)
    post_s = time.perf_counter() - start
    if simulator == "peaksim":
        sources["truth"] = write_truth_peak_file(run, folder / "truth" / "run_peaks.cxi", *detector.frame_shape)
    server_peaks = _mean_peaks(sources["peakfind"])
    # the server's threshold grid, in the order of preference on ties: its default, then the lower threshold
    threshold_files = {None: sources["post"]}
    for t in sorted(thresholds):
        threshold_files[t] = post_answer(url, run, folder / f"post-t{t:g}" / "answer.cxi", timeout_s, t, mask)

    def score(
        name: str, peak_file: Path, indexer: str, peaks: str = "cxi", options: tuple[str, ...] = ()
    ) -> IndexingScore:
        events = [(peak_file, i) for i in range(n_frames)]
        result = run_indexamajig(
            events,
            geometry,
            cell,
            folder / "index",
            f"{name}-{indexer}",
            peaks=peaks,
            indexing=indexer,
            options=options,
            jobs=jobs,
        )
        if result.returncode != 0:
            raise RuntimeError(f"indexamajig failed for {name}/{indexer}: {result.stderr[-2000:]}")
        return score_run(result, events, {e: truth[e[1]] for e in events})

    # peakfinder8 and the server's threshold, tuned on these frames for each indexer (best_of); the tuned
    # row is that run
    sigma = noise_sigma(run)
    rows, tuning, server_tuning = [], [], []
    for indexer in INDEXERS:
        scored = {}
        for name, peak_file in sources.items():
            scored[name] = {"source": name, "indexer": indexer, **_score_row(score(name, peak_file, indexer))}
            rows.append(scored[name])
        if thresholds:
            grid = [
                {
                    **(scored["post"] if t is None else _score_row(score(f"post-t{t:g}", answer, indexer))),
                    "source": "post" if t is None else f"post T={t:g}",
                    "indexer": indexer,
                    "server_threshold": t,
                    "server_peaks_per_frame": _mean_peaks(answer),
                }
                for t, answer in threshold_files.items()
            ]
            best = best_of(grid)
            progress(f"  server tuned for {indexer}: threshold {best['server_threshold'] or 'default'}")
            rows.append({**best, "source": "server tuned"})
            server_tuning += grid
        grid = []
        for k in PF8_THRESHOLD_SIGMAS:
            for snr in PF8_MIN_SNR:
                options = (f"--threshold={k * sigma:.3f}", f"--min-snr={snr}")
                result = score(f"pf8-t{k:g}-snr{snr:g}", sources["peakfind"], indexer, "peakfinder8", options)
                grid.append(
                    {
                        "indexer": indexer,
                        "threshold_sigmas": k,
                        "threshold": round(k * sigma, 3),
                        "min_snr": snr,
                        "options": " ".join(options),
                        **_score_row(result),
                    }
                )
        best = best_of(grid)
        progress(f"  peakfinder8 tuned for {indexer}: {best['options']}")
        rows.append({**best, "source": "peakfinder8"})
        tuning += grid
    for row in rows:
        row.setdefault("server_peaks_per_frame", server_peaks)
        row.update(
            simulator=simulator, detector=detector.name, peakfind_s=round(peakfind_s, 1), post_s=round(post_s, 1)
        )
        progress(
            f"  {row['source']:12s} {row['indexer']:8s} {row['indexed']}/{row['frames']} indexed, "
            f"{row['true_orientation']} true, {row['coordinate_warnings']} coordinate warnings"
        )
    for row in tuning + server_tuning:
        row.update(simulator=simulator, detector=detector.name)
    return rows, tuning, server_tuning


def _score_row(score: IndexingScore) -> dict[str, Any]:
    row = asdict(score)
    row.update(rate=score.rate, true_fraction=score.true_fraction, seconds=round(score.seconds, 1))
    return row


def _mean_peaks(peak_file: Path) -> float:
    with h5py.File(peak_file, "r") as h5:
        return float(h5["/entry_1/result_1/nPeaks"][()].mean())


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def plot(payload: dict[str, Any], path: Path) -> None:
    """Indexed and true-orientation fractions of ``payload["rows"]``, one panel per simulator and indexer (PNG)."""
    rows = payload["rows"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    simulators = sorted({r["simulator"] for r in rows}, key=SIMULATORS.index)
    sources = [s for s in PLOT_SOURCES if any(r["source"] == s for r in rows)]
    fig, axes = plt.subplots(len(simulators), len(INDEXERS), figsize=(12, 3.6 * len(simulators)), squeeze=False)
    for i, simulator in enumerate(simulators):
        detectors = [d for d in GEOMETRIES if any(r["detector"] == d and r["simulator"] == simulator for r in rows)]
        for j, indexer in enumerate(INDEXERS):
            ax = axes[i][j]
            width = 0.8 / len(sources)
            for k, source in enumerate(sources):
                xs, rate, true = [], [], []
                for d, detector in enumerate(detectors):
                    match = [
                        r
                        for r in rows
                        if (r["simulator"], r["detector"], r["indexer"], r["source"])
                        == (simulator, detector, indexer, source)
                    ]
                    if match:
                        xs.append(d + (k - (len(sources) - 1) / 2) * width)
                        rate.append(match[0]["rate"])
                        true.append(match[0]["true_orientation"] / match[0]["frames"])
                bars = ax.bar(xs, rate, width, label=PLOT_SOURCES[source], alpha=0.45)
                ax.bar(xs, true, width, color=bars.patches[0].get_facecolor()[:3] if bars.patches else None)
            ax.set_xticks(range(len(detectors)), detectors)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("fraction of frames")
            ax.set_title(f"{simulator} frames, {indexer} (light: indexed, dark: true orientation)", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tuned_setting(row: dict[str, Any]) -> str:
    """What a result row was tuned to on its own frames: peakfinder8's options, the server's
    ``X-Peak-Threshold`` (or ``default`` when no threshold beat it); "—" for the untuned rows."""
    if row["source"] == "peakfinder8":
        return row["options"]
    if row["source"] == "server tuned":
        return "default" if row["server_threshold"] is None else f"X-Peak-Threshold {row['server_threshold']:g}"
    return "—"


def report(payload: dict[str, Any], out: Path, name: str) -> None:
    rows = [{**r, "tuned": tuned_setting(r)} for r in payload["rows"]]
    columns = [
        ("simulator", "frames from"),
        ("detector", "detector"),
        ("indexer", "indexer"),
        ("source", "peaks"),
        ("tuned", "tuned on these frames"),
        ("indexed", "indexed"),
        ("frames", "of"),
        ("true_orientation", "true orientation"),
        ("coordinate_warnings", "coordinate warnings"),
        ("median_misorientation_deg", "median misorientation °"),
        ("seconds", "indexamajig s"),
        ("server_peaks_per_frame", "server peaks/frame"),
    ]
    table = markdown_table(rows, columns)
    tuning = markdown_table(
        payload["peakfinder8_tuning"],
        [
            ("simulator", "frames from"),
            ("detector", "detector"),
            ("indexer", "indexer"),
            ("threshold", "--threshold (ADU)"),
            ("min_snr", "--min-snr"),
            ("indexed", "indexed"),
            ("true_orientation", "true orientation"),
        ],
    )
    server_grid = payload.get("server_threshold_tuning", [])
    thresholds = markdown_table(
        [
            {**r, "threshold": "default (argmax)" if r["server_threshold"] is None else r["server_threshold"]}
            for r in server_grid
        ],
        [
            ("simulator", "frames from"),
            ("detector", "detector"),
            ("indexer", "indexer"),
            ("threshold", "X-Peak-Threshold"),
            ("server_peaks_per_frame", "server peaks/frame"),
            ("indexed", "indexed"),
            ("true_orientation", "true orientation"),
            ("median_misorientation_deg", "median misorientation °"),
        ],
    )
    text = (
        f"# Indexing with CrystFEL {payload['crystfel']}: the server's peaks, peakfinder8 and the truth\n\n"
        f"{payload['frames']} frames per detector of one lysozyme crystal each (random orientation), in the "
        f"experiment of the shipped geometry files; server: {payload['server']}. True orientation: within "
        f"{payload['true_orientation_deg']}° of the simulated one after any re-indexing. The headline is the "
        f'server at its default threshold (peakfind, post); the rows with a setting under "tuned on these '
        f'frames" were chosen on the very frames they are scored on (most frames indexed, then most true '
        f"orientations).{REQUEST_MASKS_NOTE if payload.get('request_masks') else ''}\n\n{table}\n\n"
        f"peakfinder8, tuned on the same frames for each indexer (the row above is the grid's best):"
        f"\n\n{tuning}"
    )
    if server_grid:
        text += (
            f'\n\nThe server\'s threshold, tuned on the same frames for each indexer (the "server tuned" row '
            f"above is the best of these, ties to the default, then the lower threshold):\n\n{thresholds}"
        )
    write_report(out, name, payload, text, f"`{payload['command']}`", plot=plot, json_default=float)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detectors", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    p.add_argument("--simulators", nargs="+", default=list(SIMULATORS), choices=SIMULATORS)
    p.add_argument("--frames", type=int, default=8, help="frames per detector and simulator (default 8)")
    p.add_argument("--seed", type=int, default=20250)
    p.add_argument("--url", help="a running server's inference URL (default: start one with the bundled model)")
    p.add_argument("--jobs", type=int, default=2, help="indexamajig -j (default 2)")
    p.add_argument("--timeout", type=float, default=1200.0, help="per-request timeout in s")
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[],
        metavar="T",
        help="also post the frames with X-Peak-Threshold T (each in (0, 1)) and report a 'server tuned' row: "
        "the best of the default and these thresholds on the same frames, per indexer",
    )
    p.add_argument(
        "--work",
        type=Path,
        help="keep the frames, peak files and streams here (a second run with the "
        "same --work and --frames reuses the frames and the server's files)",
    )
    p.add_argument(
        "--request-masks",
        action="store_true",
        help="send each run's bad-pixel mask with every request (peakfind and the POSTs), as peakfinder8 gets it",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="indexing_crystfel")
    p.add_argument("--replot", type=Path, metavar="JSON", help="only rewrite the table and plot of a results file")
    args = p.parse_args(argv)
    if not 1 <= args.frames <= 16:
        p.error("--frames must be in 1..16 (one request carries a whole run)")
    if not all(0.0 < t < 1.0 for t in args.thresholds) or len(set(args.thresholds)) != len(args.thresholds):
        p.error("--thresholds must be distinct numbers strictly between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot is not None:
        report(json.loads(args.replot.read_text()), args.replot.parent, args.replot.stem)
        return 0
    bin_dir = crystfel_bin()
    if bin_dir is None:
        print("CrystFEL not found: set CRYSTFEL_BIN or put indexamajig on PATH", file=sys.stderr)
        return 2
    version = subprocess.run([str(bin_dir / "indexamajig"), "--version"], capture_output=True, text=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-indexing-"))
    work.mkdir(parents=True, exist_ok=True)
    cell = LYSOZYME.write(work / "lysozyme.cell")
    process = None
    url = args.url
    if url is None:
        progress("starting TorchServe with the bundled model ...")
        process, url = start_server(work / "server", args.frames)
    rows: list[dict[str, Any]] = []
    tuning: list[dict[str, Any]] = []
    server_tuning: list[dict[str, Any]] = []
    try:
        for simulator in args.simulators:
            for name in args.detectors:
                detector = get_geometry(name)
                folder = work / simulator / name
                folder.mkdir(parents=True, exist_ok=True)
                progress(f"{simulator} / {name}: simulating {args.frames} frames ...")
                seed = args.seed + list(GEOMETRIES).index(name)
                run = (
                    peaksim_run(detector, args.frames, folder, seed)
                    if simulator == "peaksim"
                    else pattern_sim_run(detector, args.frames, folder, cell, bin_dir)
                )
                progress(f"{simulator} / {name}: server, then indexamajig ...")
                found, tuned, thresholds = index_sources(
                    run,
                    detector,
                    simulator,
                    url,
                    folder,
                    cell,
                    args.jobs,
                    args.timeout,
                    tuple(args.thresholds),
                    args.request_masks,
                )
                rows += found
                tuning += tuned
                server_tuning += thresholds
    finally:
        if process is not None:
            stop_foreground(process)
    payload = {
        "command": command_line(),
        "crystfel": version.stdout.split()[1] if version.stdout else "?",
        "server": f"TorchServe, bundled model, float32 on {platform.processor() or platform.machine()} CPU"
        if args.url is None
        else args.url,
        "frames": args.frames,
        "cell": asdict(LYSOZYME),
        "true_orientation_deg": 1.0,
        "pattern_sim_options": list(PATTERN_SIM_OPTIONS),
        "setups": {n: asdict(nominal_setup(get_geometry(n))) for n in args.detectors},
        "rows": rows,
        "peakfinder8_tuning": tuning,
        "server_thresholds": sorted(args.thresholds),
        "request_masks": args.request_masks,
        "server_threshold_tuning": server_tuning,
        "host": platform.node(),
    }
    report(payload, args.out, args.name)
    progress(f"wrote {args.out / args.name}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
