import pytest

from peaknet_serve.decode.limits import DecodeLimits, check_body_size, check_frames_shape
from peaknet_serve.errors import PayloadTooLarge

LIMITS = DecodeLimits(max_body_bytes=1000, max_pixels=10_000, max_frames=4, max_panels_per_frame=3, max_side=100)


def test_defaults_fit_sixteen_epix10k_frames():
    limits = DecodeLimits()
    check_frames_shape((16, 16, 352, 384), limits)
    assert limits.max_body_bytes >= 16 * 16 * 352 * 384 * 4  # as float32


def test_shapes_within_every_limit_pass():
    check_frames_shape((4, 1, 50, 50), LIMITS)
    check_frames_shape((1, 3, 100, 30), LIMITS)
    check_body_size(1000, LIMITS)


@pytest.mark.parametrize(
    ("shape", "mentions"),
    [
        ((5, 1, 10, 10), "frames"),
        ((1, 4, 10, 10), "panels"),
        ((1, 1, 101, 10), "per side"),
        ((1, 1, 10, 101), "per side"),
        ((4, 3, 30, 30), "pixels"),
        ((1, 1, 10**30, 10**30), "per side"),
    ],
)
def test_each_exceeded_limit_is_a_413_naming_it(shape, mentions):
    with pytest.raises(PayloadTooLarge) as info:
        check_frames_shape(shape, LIMITS)
    assert info.value.type == "too_large"
    assert mentions in info.value.message


def test_pixel_product_is_checked_with_unbounded_integers():
    limits = DecodeLimits(max_side=10**40, max_pixels=10**6)
    with pytest.raises(PayloadTooLarge):
        check_frames_shape((1, 1, 2**32, 2**32), limits)  # 2**64 would wrap to 0 in int64


def test_body_longer_than_the_limit_is_a_413():
    with pytest.raises(PayloadTooLarge) as info:
        check_body_size(1001, LIMITS)
    assert "1001" in info.value.message and "1000" in info.value.message
