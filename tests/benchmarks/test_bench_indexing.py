"""bench_indexing: its pieces on real files and real CrystFEL programs, and one small run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmarks.bench_indexing import noise_sigma, pattern_sim_run
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


@needs_crystfel
@pytest.mark.e2e
@pytest.mark.slow
def test_small_run_end_to_end(tmp_path):
    """One ePix10k2M frame through a real TorchServe, peakfinder8 and the truth, both indexers."""
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
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=1200,
    )
    payload = json.loads((out / "indexing_crystfel.json").read_text())
    rows = payload["rows"]
    assert {(r["source"], r["indexer"]) for r in rows} == {
        (s, i) for s in ("peakfind", "post", "peakfinder8", "truth") for i in ("taketwo", "asdf")
    }
    assert all(r["coordinate_warnings"] == 0 for r in rows)
    truth = [r for r in rows if r["source"] == "truth"]
    assert all(r["indexed"] == r["true_orientation"] == 1 for r in truth)
    assert (out / "indexing_crystfel.png").stat().st_size > 0
    assert "Reproduce:" in (out / "indexing_crystfel.md").read_text()
