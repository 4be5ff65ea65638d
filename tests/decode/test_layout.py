import pytest

from peaknet_serve.decode.layout import frames_shape
from peaknet_serve.errors import BadRequest


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((352, 384), (1, 1, 352, 384)), ((16, 352, 384), (1, 16, 352, 384)), ((2, 16, 35, 38), (2, 16, 35, 38))],
)
def test_raw_and_npy_layouts(shape, expected):
    assert frames_shape(shape) == expected


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((352, 384), (1, 1, 352, 384)), ((5, 352, 384), (5, 1, 352, 384)), ((2, 16, 35, 38), (2, 16, 35, 38))],
)
def test_hdf5_layouts_read_a_3d_stack_as_single_panel_frames(shape, expected):
    assert frames_shape(shape, stack_is_frames=True) == expected


@pytest.mark.parametrize("shape", [(), (7,), (1, 2, 3, 4, 5)])
def test_wrong_number_of_dimensions_is_a_bad_shape(shape):
    with pytest.raises(BadRequest) as info:
        frames_shape(shape)
    assert info.value.type == "bad_shape"
    assert "(N, P, H, W)" in info.value.message


@pytest.mark.parametrize("shape", [(0, 4), (3, 0, 4), (1, 1, 4, 0), (-1, 4)])
def test_empty_dimensions_are_a_bad_shape(shape):
    with pytest.raises(BadRequest) as info:
        frames_shape(shape)
    assert info.value.type == "bad_shape"
