"""Detector geometries: shapes, pixel <-> lab mapping, border masks."""

import numpy as np
import pytest

from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, get_geometry

EXPECTED_SHAPES = {
    "epix10k2m": (16, 352, 384),
    "jungfrau4m": (8, 512, 1024),
    "cspad": (32, 185, 388),
    "rayonix": (1, 1920, 1920),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_frame_shapes(name):
    assert get_geometry(name).frame_shape == EXPECTED_SHAPES[name]


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_lab_to_panel_inverts_pixel_positions(name):
    geometry = get_geometry(name)
    offset = (0.7e-3, -0.4e-3)
    x, y = geometry.pixel_lab_xy(offset)
    rng = np.random.default_rng(0)
    p = rng.integers(geometry.n_panels, size=50)
    ss = rng.integers(geometry.panel_shape[0], size=50)
    fs = rng.integers(geometry.panel_shape[1], size=50)
    panel, ss_back, fs_back = geometry.lab_to_panel(
        x[p, ss, fs].astype(np.float64), y[p, ss, fs].astype(np.float64), offset
    )
    np.testing.assert_array_equal(panel, p)
    np.testing.assert_allclose(ss_back, ss, atol=1e-3)
    np.testing.assert_allclose(fs_back, fs, atol=1e-3)


def test_points_in_gaps_hit_no_panel():
    geometry = get_geometry("epix10k2m")
    # The grid is centred on the beam with a 2 mm gap between the two middle columns and rows.
    panel, _, _ = geometry.lab_to_panel(np.array([0.0, 0.5]), np.array([0.0, 0.5]))
    assert panel.tolist() == [-1, -1]


def test_border_mask_marks_edges_and_asic_seams():
    geometry = get_geometry("epix10k2m")
    border = geometry.border_mask()
    assert border.shape == geometry.frame_shape
    assert border[:, 0, :].all() and border[:, -1, :].all() and border[:, :, 0].all()
    assert border[:, 175, 10].all() and border[:, 176, 10].all()  # ASIC seam rows
    assert not border[:, 100, 100].any()


def test_unknown_geometry_is_an_error():
    with pytest.raises(ValueError, match="unknown detector"):
        get_geometry("pilatus")
