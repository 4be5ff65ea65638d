"""Geometry files: the shipped ones are what the generator writes, they put every pixel where peaksim puts it,
and CrystFEL reads them and indexes peaksim's truth peaks through them with the true orientation."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from peaknet_serve.encode.cxi import DATA_PATH
from peaknet_serve.eval.crystfel import crystfel_bin, run_indexamajig
from peaknet_serve.eval.indexing import (
    LYSOZYME,
    read_truth_orientations,
    score_run,
    simulate_known_cell,
    write_known_cell_run,
    write_truth_peak_file,
)
from peaknet_serve.geometry import (
    SHIPPED,
    ExperimentSetup,
    grid_geometry,
    nominal_setup,
    shipped_geometry_path,
    write_geometry,
)
from peaknet_serve.geometry.cli import main as geometry_main
from peaknet_serve.sim.peaksim.geometry import get_geometry

CRYSTFEL = crystfel_bin()
needs_crystfel = pytest.mark.skipif(CRYSTFEL is None, reason="CrystFEL not found (CRYSTFEL_BIN, PATH, ../shared)")


def parse_geometry(text: str) -> dict[str, dict[str, str]]:
    """``{panel: {key: value}}`` plus the top-level keys under ``""`` (comments dropped)."""
    parsed: dict[str, dict[str, str]] = {"": {}}
    for line in text.splitlines():
        line = line.split(";", 1)[0].strip()
        if not line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        panel, _, name = key.rpartition("/")
        parsed.setdefault(panel, {})[name] = value
    return parsed


def vector(text: str) -> np.ndarray:
    terms = dict((axis, float(value)) for value, axis in re.findall(r"([-+][0-9.]+)([xy])", text))
    return np.array([terms.get("x", 0.0), terms.get("y", 0.0)])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_is_what_the_generator_writes(name, tmp_path):
    detector = get_geometry(name)
    text = shipped_geometry_path(name).read_text()
    assert text == write_geometry(detector, nominal_setup(detector))
    assert geometry_main(["--detector", name, "-o", str(tmp_path / "g.geom")]) == 0
    assert (tmp_path / "g.geom").read_text() == text


@pytest.mark.parametrize("name", SHIPPED)
def test_every_pixel_lands_where_peaksim_puts_it(name):
    """CrystFEL's position of pixel index (ss, fs) of panel k, read back from the file: corner +
    (fs + 0.5) fs_vector + (ss + 0.5) ss_vector (the half-pixel shift), in pixels of 1/res metres."""
    detector = get_geometry(name)
    setup = nominal_setup(detector)
    geometry = parse_geometry(shipped_geometry_path(name).read_text())
    top = geometry[""]
    assert float(top["clen"].split()[0]) == setup.clen_m and top["photon_energy"] == "9500 eV"
    assert float(top["res"]) == pytest.approx(1 / detector.pixel_size, rel=1e-9)
    assert top["dim0"] == "%" and top["data"] == DATA_PATH and top["peak_list_type"] == "cxi"
    x, y = detector.pixel_lab_xy()
    n_ss, n_fs = detector.panel_shape
    rng = np.random.default_rng(0)
    for k in range(detector.n_panels):
        panel = geometry[f"p{k}"]
        assert (int(panel["min_ss"]), int(panel["max_ss"])) == (k * n_ss, k * n_ss + n_ss - 1)
        assert (int(panel["min_fs"]), int(panel["max_fs"])) == (0, n_fs - 1)
        corner = np.array([float(panel["corner_x"]), float(panel["corner_y"])])
        for ss, fs in zip(rng.integers(0, n_ss, 5), rng.integers(0, n_fs, 5)):
            lab = (corner + (fs + 0.5) * vector(panel["fs"]) + (ss + 0.5) * vector(panel["ss"])) / float(top["res"])
            np.testing.assert_allclose(lab, [x[k, ss, fs], y[k, ss, fs]], atol=1e-6 * detector.pixel_size + 1e-7)


def test_grid_option_rebuilds_a_known_layout(tmp_path):
    epix = get_geometry("epix10k2m")
    grid = grid_geometry("grid", 4, 4, (352, 384), 100e-6, gap=2.0e-3)
    np.testing.assert_allclose(grid.corners, epix.corners, atol=1e-12)
    setup = ExperimentSetup(clen_m=0.1, photon_energy_ev=12000.0, adu_per_photon=150.0, beam_offset_m=(1e-3, 0.0))
    expected = write_geometry(grid, setup, title="grid 4x4: 16 panel(s) of 352 x 384 pixels")
    args = [
        "--grid",
        "4x4",
        "--panel-shape",
        "352x384",
        "--pixel-size",
        "100",
        "--gap",
        "2",
        "--clen",
        "0.1",
        "--energy",
        "12",
        "--adu-per-photon",
        "150",
        "--beam-offset",
        "1",
        "0",
        "-o",
        str(tmp_path / "g.geom"),
    ]
    assert geometry_main(args) == 0
    assert (tmp_path / "g.geom").read_text() == expected
    moved = parse_geometry(expected)["p0"]
    plain = parse_geometry(write_geometry(grid, ExperimentSetup(clen_m=0.1)))["p0"]
    assert float(moved["corner_x"]) == pytest.approx(float(plain["corner_x"]) - 10.0)  # 1 mm = 10 px
    with pytest.raises(SystemExit):
        geometry_main(["--grid", "2x2", "--clen", "0.1"])  # no panel shape or pixel size


@needs_crystfel
@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_crystfel_reads_the_shipped_file_and_indexes_truth_peaks_with_the_true_orientation(name, tmp_path):
    detector = get_geometry(name)
    setup = nominal_setup(detector)
    frames, reciprocal = simulate_known_cell(detector, 2, LYSOZYME, setup, seed=11)
    run = write_known_cell_run(tmp_path / "run.cxi", frames, reciprocal, name)
    peaks = write_truth_peak_file(run, tmp_path / "peaks" / "run_peaks.cxi", *detector.frame_shape)
    geometry = shipped_geometry_path(name)
    (tmp_path / "files.lst").write_text(f"{peaks}\n")
    listed = subprocess.run(
        [str(CRYSTFEL / "list_events"), "-i", "files.lst", "-g", str(geometry), "-o", "events.lst"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    assert (tmp_path / "events.lst").read_text().split() == [str(peaks), "//0", str(peaks), "//1"]
    cell = LYSOZYME.write(tmp_path / "lyso.cell")
    truth = read_truth_orientations(run)
    # frames with enough strong spots to be indexable at all (a weak crystal gives a handful)
    events = [(peaks, i) for i, f in enumerate(frames) if f.peaks.strong.sum() >= 25]
    assert events
    result = run_indexamajig(events, geometry, cell, tmp_path / "index", "truth", indexing="asdf", jobs=1)
    assert result.returncode == 0, result.stderr[-2000:]
    score = score_run(result, events, {(peaks, i): truth[i] for _, i in events})
    assert score.coordinate_warnings == 0
    assert score.indexed == score.true_orientation == len(events), result.stderr[-2000:]
