"""peaknet-simulate: sample CXI input files, reproducible and readable by the clients."""

import h5py
import numpy as np

from peaknet_serve.clients.payloads import read_frames
from peaknet_serve.sim.peaksim.cxi import read_truth
from peaknet_serve.sim.peaksim.frame import simulate_frame
from peaknet_serve.sim.peaksim.geometry import get_geometry
from peaknet_serve.sim.simulate import main


def test_writes_the_frames_of_the_seed_with_their_truth(tmp_path):
    out = tmp_path / "run.cxi"
    assert main(["-o", str(out), "--geometry", "cspad", "--frames", "2", "--seed", "5", "--uint16"]) == 0
    expected = simulate_frame(get_geometry("cspad"), np.random.default_rng([5, 1]))
    with h5py.File(out) as f:
        data = f["/entry_1/data_1/data"]
        assert data.shape == (2, *expected.uint16.shape) and data.dtype == np.uint16
        np.testing.assert_array_equal(data[1], expected.uint16)
    strong, _ = read_truth(out, 1)
    assert len(strong.ss) == int(expected.peaks.strong.sum())
    frames = read_frames(out, n_frames=2)  # what peakfind/loadtest read
    assert frames.shape == (2, *expected.uint16.shape)


def test_the_same_command_writes_the_same_frames(tmp_path):
    for name in ("a.cxi", "b.cxi"):
        main(["-o", str(tmp_path / name), "--geometry", "rayonix", "--frames", "1"])
    with h5py.File(tmp_path / "a.cxi") as a, h5py.File(tmp_path / "b.cxi") as b:
        np.testing.assert_array_equal(a["/entry_1/data_1/data"][()], b["/entry_1/data_1/data"][()])
