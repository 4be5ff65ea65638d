"""bench_indexing: its pieces on real files and real CrystFEL programs, and one small run end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmarks.bench_indexing import best_of, main, noise_sigma, parse_args, pattern_sim_run, tuned_setting
from peaknet_serve.encode.cxi import DATA_PATH
from peaknet_serve.eval.crystfel import crystfel_bin
from peaknet_serve.eval.indexing import LYSOZYME, TRUTH_PATH
from peaknet_serve.geometry import grid_geometry

ROOT = Path(__file__).resolve().parents[2]
CRYSTFEL = crystfel_bin()
needs_crystfel = pytest.mark.skipif(CRYSTFEL is None, reason="CrystFEL not found (CRYSTFEL_BIN, PATH, ../shared)")


def test_noise_sigma_is_the_robust_spread_of_the_frames(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(100.0, 5.0, (3, 2, 64, 64)).astype(np.float32)
    data[:, :, ::9, ::9] = 60000.0  # bright spots do not widen it
    with h5py.File(tmp_path / "run.cxi", "w") as h5:
        h5[DATA_PATH] = data
    assert noise_sigma(tmp_path / "run.cxi") == pytest.approx(5.0, rel=0.05)


def _scored(indexed: int, true: int, **setting: object) -> dict:
    return {"indexed": indexed, "true_orientation": true, **setting}


def test_best_of_indexes_most_then_finds_most_true_orientations():
    grid = [_scored(2, 2, t=0.5), _scored(3, 1, t=0.45), _scored(3, 3, t=0.35), _scored(1, 1, t=0.2)]
    assert best_of(grid)["t"] == 0.35
    assert best_of(grid[:2])["t"] == 0.45  # more frames indexed beats more true orientations


def test_best_of_gives_ties_to_the_earlier_row():
    grid = [_scored(3, 3, t=None), _scored(3, 3, t=0.35), _scored(3, 3, t=0.45)]
    assert best_of(grid)["t"] is None
    assert best_of(grid[1:])["t"] == 0.35


def test_tuned_setting_names_what_a_row_was_tuned_to():
    assert tuned_setting({"source": "peakfinder8", "options": "--threshold=12.000 --min-snr=5.0"}) == (
        "--threshold=12.000 --min-snr=5.0"
    )
    assert tuned_setting({"source": "server tuned", "server_threshold": 0.35}) == "X-Peak-Threshold 0.35"
    assert tuned_setting({"source": "server tuned", "server_threshold": None}) == "default"
    assert tuned_setting({"source": "post"}) == "—"


@pytest.mark.parametrize("bad", [["0"], ["1"], ["1.5"], ["0.3", "0.3"]])
def test_thresholds_must_be_distinct_probabilities(bad):
    with pytest.raises(SystemExit):
        parse_args(["--thresholds", *bad])
    assert parse_args(["--thresholds", "0.45", "0.35"]).thresholds == [0.45, 0.35]


def test_replot_rewrites_the_committed_results(tmp_path):
    """The committed results file, with or without the server's threshold rows, replots to a table and a PNG."""
    committed = ROOT / "benchmarks" / "results" / "indexing_crystfel.json"
    shutil.copy(committed, tmp_path / "indexing_crystfel.json")
    assert main(["--replot", str(tmp_path / "indexing_crystfel.json")]) == 0
    text = (tmp_path / "indexing_crystfel.md").read_text()
    assert "tuned on these frames" in text and "| peakfinder8 | --threshold=" in text
    assert (tmp_path / "indexing_crystfel.png").stat().st_size > 0
    assert json.loads((tmp_path / "indexing_crystfel.json").read_text()) == json.loads(committed.read_text())
    assert ("X-Peak-Threshold" in text) == bool(json.loads(committed.read_text()).get("server_threshold_tuning"))


@needs_crystfel
def test_pattern_sim_run_holds_the_images_and_their_true_orientations(tmp_path):
    detector = grid_geometry("two", 1, 2, (96, 96), 100e-6, gap=1e-3)
    run = pattern_sim_run(detector, 2, tmp_path, LYSOZYME.write(tmp_path / "cell"), CRYSTFEL)
    with h5py.File(run, "r") as h5:
        assert h5[DATA_PATH].shape == (2, 2, 96, 96) and np.isfinite(h5[DATA_PATH][()]).all()
        reciprocal = h5[TRUTH_PATH][()]
    lengths = np.linalg.norm(reciprocal, axis=2)  # |a*| = 1/a for this orthogonal cell, in 1/Angstrom
    np.testing.assert_allclose(lengths, [[1 / 79.1, 1 / 79.1, 1 / 38.0]] * 2, rtol=1e-4)
    assert not np.allclose(reciprocal[0], reciprocal[1])  # a new orientation per image


def _peak_pixels(answer: Path) -> float:
    with h5py.File(answer, "r") as h5:
        counts = h5["/entry_1/result_1/nPeaks"][()]
        pixels = h5["/entry_1/result_1/peakNPixels"][()]
    return float(sum(pixels[i, :n].sum() for i, n in enumerate(counts)))


@needs_crystfel
@pytest.mark.e2e
@pytest.mark.slow
def test_small_run_end_to_end(tmp_path):
    """One ePix10k2M frame through a real TorchServe at its default threshold and at 0.3, peakfinder8
    and the truth, both indexers."""
    out = tmp_path / "results"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_indexing",
            "--frames",
            "1",
            "--detectors",
            "epix10k2m",
            "--simulators",
            "peaksim",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--thresholds",
            "0.3",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=1200,
    )
    payload = json.loads((out / "indexing_crystfel.json").read_text())
    rows = payload["rows"]
    assert {(r["source"], r["indexer"]) for r in rows} == {
        (s, i) for s in ("peakfind", "post", "server tuned", "peakfinder8", "truth") for i in ("taketwo", "asdf")
    }
    grid = payload["server_threshold_tuning"]
    assert [(r["indexer"], r["server_threshold"]) for r in grid] == [
        ("taketwo", None),
        ("taketwo", 0.3),
        ("asdf", None),
        ("asdf", 0.3),
    ]
    # the header reached the server: the pixels with P(peak) >= 0.3 hold those of the argmax and more
    folder = tmp_path / "work" / "peaksim" / "epix10k2m"
    assert _peak_pixels(folder / "post-t0.3" / "answer.cxi") > _peak_pixels(folder / "post" / "answer.cxi")
    for indexer in ("taketwo", "asdf"):
        tuned = next(r for r in rows if (r["source"], r["indexer"]) == ("server tuned", indexer))
        assert tuned["server_threshold"] == best_of([r for r in grid if r["indexer"] == indexer])["server_threshold"]
    assert all(r["coordinate_warnings"] == 0 for r in rows)
    truth = [r for r in rows if r["source"] == "truth"]
    assert all(r["indexed"] == r["true_orientation"] == 1 for r in truth)
    assert (out / "indexing_crystfel.png").stat().st_size > 0
    text = (out / "indexing_crystfel.md").read_text()
    assert "Reproduce:" in text and "| X-Peak-Threshold |" in text


@needs_crystfel
@pytest.mark.e2e
@pytest.mark.slow
def test_request_masks_go_with_every_request(tmp_path):
    """--request-masks: peakfind and the POST send the run's mask, the server says it used it, and
    the files are kept apart from the unmasked ones."""
    out, work = tmp_path / "results", tmp_path / "work"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_indexing", "--frames", "1", "--detectors", "epix10k2m",
         "--simulators", "peaksim", "--work", str(work), "--out", str(out), "--request-masks"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=1200,
    )  # fmt: skip
    payload = json.loads((out / "indexing_crystfel.json").read_text())
    assert payload["request_masks"] is True
    assert "Every request carried the run's bad-pixel mask" in (out / "indexing_crystfel.md").read_text()
    folder = work / "peaksim" / "epix10k2m" / "request-masks"
    with h5py.File(folder / "post" / "answer.cxi", "r") as h5:
        assert h5.attrs["bad_pixel_mask"] == "request"
    with h5py.File(folder / "peakfind" / "run_peaks.cxi", "r") as h5:
        assert h5.attrs["server_bad_pixel_mask"] == "request"
    assert not (work / "peaksim" / "epix10k2m" / "post").exists()
