"""peaknet_serve.clients.peakfind: resumable output, input discovery and the file pipeline (the CXI layout
itself is tested in tests/encode/test_cxi.py).

The pipeline is driven by a real (if simple) peak finder in place of the server: threshold +
8-connected labelling + centre of mass with SciPy, answering in the server's JSON schema. It
sleeps a random few milliseconds so that answers arrive out of order, as they do from a server.
The real server is driven in tests/e2e/test_peakfind_e2e.py.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from peaknet_serve.clients.payloads import Geometry, simulate_frames
from peaknet_serve.clients.peakfind import (
    PeakfindError,
    discover_inputs,
    is_complete,
    output_paths,
    process_file,
    run,
)
from peaknet_serve.encode.cxi import FrameSource, cxi_peaks, write_peak_file
from peaknet_serve.wire import CXI_MAX_PEAKS
from tests.clients.reference_peaks import threshold_peaks

GEOMETRY = Geometry("test", 2, 64, 80)


def write_run(path, n_frames, seed=0, slab=False, spots=6):
    sim = simulate_frames(
        GEOMETRY,
        n_frames,
        "uint16",
        spots_per_frame=spots,
        background=3.0,
        spot_photons=(2000, 4000),
        spot_sigma=(0.7, 1.0),
        seed=seed,
    )
    data = sim.frames.reshape(n_frames, -1, GEOMETRY.width) if slab else sim.frames
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=data, chunks=(1, *data.shape[1:]), compression="gzip")
    return sim


# ---------------------------------------------------------------------------- output files


def test_peak_file_is_complete(tmp_path):
    source = tmp_path / "run.cxi"
    sim = write_run(source, 3)
    table = cxi_peaks(threshold_peaks(sim.frames)["frames"], GEOMETRY.height)
    out = tmp_path / "out" / "run_peaks.cxi"
    write_peak_file(
        out, table, FrameSource(source, "/entry_1/data_1/data", sim.frames.shape), {"server_model": "threshold"}
    )
    assert is_complete(out, 3) and not is_complete(out, 4)
    assert [p.name for p in out.parent.iterdir()] == ["run_peaks.cxi"]  # no temporary left behind
    with h5py.File(out, "r") as f:
        assert f["/entry_1/result_1/peakXPosRaw"].shape == (3, CXI_MAX_PEAKS)
        assert np.array_equal(f["/entry_1/data_1/data"][()], sim.frames.reshape(3, -1, GEOMETRY.width))
        assert f.attrs["server_model"] == "threshold" and f.attrs["n_frames"] == 3


def test_unfinished_or_foreign_files_are_not_complete(tmp_path):
    assert not is_complete(tmp_path / "missing.cxi", 1)
    (tmp_path / "garbage.cxi").write_bytes(b"not hdf5")
    assert not is_complete(tmp_path / "garbage.cxi", 1)
    with h5py.File(tmp_path / "half.cxi", "w") as f:
        f["/entry_1/result_1/nPeaks"] = np.zeros(2, np.int32)  # no 'complete' mark
    assert not is_complete(tmp_path / "half.cxi", 2)


def test_discover_inputs(tmp_path):
    (tmp_path / "a.cxi").touch()
    (tmp_path / "b.h5").touch()
    (tmp_path / "notes.txt").touch()
    (tmp_path / "a_peaks.cxi").touch()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.hdf5").touch()
    (tmp_path / "peaks").mkdir()
    (tmp_path / "peaks" / "d.cxi").touch()
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(discover_inputs([tmp_path], exclude=tmp_path / "peaks")) == ["a.cxi", "b.h5"]
    assert names(discover_inputs([tmp_path], recursive=True, exclude=tmp_path / "peaks")) == ["a.cxi", "b.h5", "c.hdf5"]
    assert names(discover_inputs([tmp_path / "a.cxi", tmp_path])) == ["a.cxi", "b.h5"]  # no repeats
    with pytest.raises(FileNotFoundError):
        discover_inputs([tmp_path / "nope"])


def test_output_names_must_not_collide(tmp_path):
    assert output_paths([tmp_path / "x" / "r1.cxi"], tmp_path / "o") == [tmp_path / "o" / "r1_peaks.cxi"]
    with pytest.raises(ValueError, match="both write"):
        output_paths([tmp_path / "x" / "r1.cxi", tmp_path / "y" / "r1.h5"], tmp_path / "o")


# ---------------------------------------------------------------------------- the pipeline


def test_process_file_finds_the_simulated_spots_in_frame_order(tmp_path):
    source = tmp_path / "run.cxi"
    sim = write_run(source, 7, seed=1)
    seen = []
    result = process_file(
        source,
        tmp_path / "run_peaks.cxi",
        threshold_peaks,
        frames_per_request=2,
        concurrency=3,
        min_peaks=6,
        on_frames=seen.append,
    )
    assert result.status == "done" and result.frames == 7 and sum(seen) == 7
    with h5py.File(tmp_path / "run_peaks.cxi", "r") as f:
        n_peaks = f["/entry_1/result_1/nPeaks"][()]
        x, y = f["/entry_1/result_1/peakXPosRaw"][()], f["/entry_1/result_1/peakYPosRaw"][()]
    checked = 0
    for frame in range(7):
        truth = sim.spots[sim.spots[:, 0] == frame]
        truth_y = truth[:, 1] * GEOMETRY.height + truth[:, 2]
        apart = np.hypot(truth_y[:, None] - truth_y[None], truth[:, None, 3] - truth[None, :, 3])
        isolated = (apart + 100 * np.eye(len(truth))).min(axis=1) > 8  # two close spots merge into one peak
        checked += isolated.sum()
        found = np.stack([y[frame, : n_peaks[frame]], x[frame, : n_peaks[frame]]], axis=1)
        # every isolated simulated spot has a peak within half a pixel, at its place in the stacked slab
        distance = np.hypot(found[:, None, 0] - truth_y[None], found[:, None, 1] - truth[None, :, 3])
        assert (distance.min(axis=0)[isolated] < 0.5).all(), f"frame {frame}"
    assert checked >= 20
    assert result.peaks == int(n_peaks.sum()) and result.hits == int((n_peaks >= 6).sum())


def test_slab_files_split_into_panels_give_the_same_positions(tmp_path):
    write_run(tmp_path / "panels.cxi", 3, seed=2)
    write_run(tmp_path / "slab.cxi", 3, seed=2, slab=True)
    process_file(tmp_path / "panels.cxi", tmp_path / "p.cxi", threshold_peaks)
    process_file(tmp_path / "slab.cxi", tmp_path / "s.cxi", threshold_peaks, panels=2)
    with h5py.File(tmp_path / "p.cxi", "r") as p, h5py.File(tmp_path / "s.cxi", "r") as s:
        for name in ("nPeaks", "peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakTotalIntensityRaw"):
            assert np.array_equal(p[f"/entry_1/result_1/{name}"][()], s[f"/entry_1/result_1/{name}"][()])
        assert np.array_equal(p["/entry_1/data_1/data"][()], s["/entry_1/data_1/data"][()])  # one slab layout


def test_run_resumes_and_reports_failures(tmp_path):
    inputs = [tmp_path / "in" / f"r{i}.cxi" for i in range(3)]
    inputs[0].parent.mkdir()
    for i, path in enumerate(inputs):
        write_run(path, 2 + i, seed=i)
    out = tmp_path / "peaks"

    first = run(inputs, out, threshold_peaks, min_peaks=1, show_progress=False).totals()
    assert first["files_done"] == 3 and first["frames"] == 2 + 3 + 4 and first["files_failed"] == 0
    assert first["hits"] == 9 and first["peaks_per_frame"] > 3
    listed = (out / "peaks.lst").read_text().split()
    assert listed == [str((out / f"r{i}_peaks.cxi").resolve()) for i in range(3)]

    (out / "r1_peaks.cxi").unlink()
    second = run(inputs, out, threshold_peaks, show_progress=False)
    assert [f.status for f in second.files] == ["skipped", "skipped", "done"]
    assert second.totals()["frames"] == 3

    def refuses(frames):
        raise PeakfindError("server answered 400: bad")

    third = run(inputs, out, refuses, overwrite=True, show_progress=False)
    assert third.totals()["files_failed"] == 3
    assert "FAILED" in third.format() and "server answered 400" in third.format()
    assert is_complete(out / "r0_peaks.cxi", 2), "a failed redo leaves the finished file alone"


def test_run_reports_an_unreadable_input_and_goes_on(tmp_path):
    good, bad = tmp_path / "good.cxi", tmp_path / "bad.cxi"
    write_run(good, 2)
    with h5py.File(bad, "w") as f:
        f["/other"] = np.zeros((2, 4, 4))
    summary = run([bad, good], tmp_path / "out", threshold_peaks, show_progress=False)
    assert [f.status for f in summary.files] == ["failed", "done"]
    assert "--dataset" in summary.files[0].error
