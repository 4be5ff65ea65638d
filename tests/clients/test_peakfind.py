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
    file_mask,
    is_complete,
    output_paths,
    parse_args,
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


# ---------------------------------------------------------------------------- the input's mask


class MaskedFinder:
    """``predict`` that records the mask of every request and finds peaks with its bad pixels at 0."""

    def __init__(self):
        self.masks: list[np.ndarray | None] = []

    def __call__(self, frames, mask=None):
        self.masks.append(mask)
        return threshold_peaks(frames if mask is None else np.where(mask, frames, 0).astype(frames.dtype))


def test_the_inputs_static_mask_goes_with_every_request_and_drops_its_peaks(tmp_path):
    source = tmp_path / "run.cxi"
    write_run(source, 5, seed=3)
    good = np.ones(GEOMETRY.frame_shape, np.uint8)
    good[0] = 0  # panel 0 bad
    with h5py.File(source, "a") as f:
        f["/entry_1/data_1/mask"] = good.reshape(-1, GEOMETRY.width)  # (P*H, W), as CXI files hold it
    finder = MaskedFinder()
    process_file(source, tmp_path / "masked.cxi", finder, frames_per_request=2, concurrency=1)
    assert len(finder.masks) == 3 and all(m.shape == GEOMETRY.frame_shape for m in finder.masks)
    assert all(np.array_equal(m, good != 0) for m in finder.masks)
    plain = MaskedFinder()
    process_file(source, tmp_path / "plain.cxi", plain, frames_per_request=2, send_mask=False)
    assert all(m is None for m in plain.masks)
    with h5py.File(tmp_path / "masked.cxi", "r") as m, h5py.File(tmp_path / "plain.cxi", "r") as p:
        masked_y = m["/entry_1/result_1/peakYPosRaw"][()][m["/entry_1/result_1/peakNPixels"][()] > 0]
        plain_y = p["/entry_1/result_1/peakYPosRaw"][()][p["/entry_1/result_1/peakNPixels"][()] > 0]
    assert (plain_y < GEOMETRY.height).sum() > 0 and (masked_y < GEOMETRY.height).sum() == 0  # none on panel 0


def test_a_per_frame_mask_of_a_slab_file_is_split_like_its_frames(tmp_path):
    source = tmp_path / "slab.cxi"
    write_run(source, 3, seed=4, slab=True)
    good = np.random.default_rng(2).random((3, *GEOMETRY.frame_shape)) > 0.2
    with h5py.File(source, "a") as f:
        f["/entry_1/data_1/mask"] = good.reshape(3, -1, GEOMETRY.width).astype(np.uint16)
    found = file_mask(source, panels=2)
    assert found.per_frame and found.dataset == "/entry_1/data_1/mask"
    assert np.array_equal(found.rows(1, 3), good[1:3])
    finder = MaskedFinder()
    process_file(source, tmp_path / "s.cxi", finder, panels=2, frames_per_request=2)
    assert sorted(m.shape for m in finder.masks) == [(1, *GEOMETRY.frame_shape), (2, *GEOMETRY.frame_shape)]


def test_a_file_without_a_mask_sends_none_and_the_option_turns_masks_off(tmp_path):
    source = tmp_path / "run.cxi"
    write_run(source, 2)
    assert file_mask(source) is None
    finder = MaskedFinder()
    process_file(source, tmp_path / "out.cxi", finder)
    assert finder.masks == [None]
    assert parse_args(["x.cxi", "--no-mask"]).no_mask and not parse_args(["x.cxi"]).no_mask
