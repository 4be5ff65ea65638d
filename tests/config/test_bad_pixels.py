"""The deployment's bad-pixel mask file: .npy and HDF5 layouts, and the files it refuses."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from peaknet_serve.config.bad_pixels import as_good_pixels, load_bad_pixel_mask, mask_summary


@pytest.fixture
def mask() -> np.ndarray:
    """(2, 6, 8) uint8, 1 = good, with a dead column and one hot pixel."""
    m = np.ones((2, 6, 8), np.uint8)
    m[0, :, 3] = 0
    m[1, 4, 5] = 0
    return m


def test_npy_of_panels_and_of_one_panel(tmp_path, mask):
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "one.npy", mask[1].astype(bool))
    good = load_bad_pixel_mask("mask.npy", tmp_path)
    assert good.dtype == bool and good.shape == (2, 6, 8) and np.array_equal(good, mask != 0)
    assert load_bad_pixel_mask(str(tmp_path / "one.npy")).shape == (1, 6, 8)
    assert mask_summary(good) == "(2, 6, 8), 7 bad pixels (7.29%)"


@pytest.mark.parametrize("dataset", ["/entry_1/data_1/mask", "/mask", "/detector/bad_pixels"])
def test_hdf5_finds_the_cxi_mask_then_mask_then_the_only_dataset(tmp_path, mask, dataset):
    path = tmp_path / "geometry.h5"
    with h5py.File(path, "w") as h5:
        h5[dataset] = mask
    assert np.array_equal(load_bad_pixel_mask(str(path)), mask != 0)


def test_hdf5_dataset_named_after_the_separator(tmp_path, mask):
    path = tmp_path / "run.cxi"
    with h5py.File(path, "w") as h5:
        h5["/entry_1/data_1/data"] = np.zeros((1, 2, 6, 8), np.float32)
        h5["/calib/mask_v2"] = mask
    with pytest.raises(ValueError, match="name one as"):
        load_bad_pixel_mask(str(path))
    assert np.array_equal(load_bad_pixel_mask(f"{path}::/calib/mask_v2"), mask != 0)
    with pytest.raises(ValueError, match="no dataset"):
        load_bad_pixel_mask(f"{path}::/calib/missing")


def test_refusals(tmp_path, mask):
    np.save(tmp_path / "inverted.npy", np.zeros_like(mask))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "frames.npy", mask[None])
    (tmp_path / "mask.txt").write_text("1 1 1")
    cases = {
        "inverted.npy": "every pixel is marked bad",
        "objects.npy": "pickled|allow_pickle|Object arrays",
        "frames.npy": "expected \\(panels, H, W\\)",
        "mask.txt": "not a .npy or HDF5",
        "absent.npy": "No such file",
        "frames.npy::/x": "holds one array",
    }
    for name, match in cases.items():
        with pytest.raises(ValueError, match=match):
            load_bad_pixel_mask(name, tmp_path)
    with pytest.raises(ValueError, match="not numeric"):
        as_good_pixels(np.array([["a", "b"]]))
