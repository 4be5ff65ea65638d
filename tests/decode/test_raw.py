import numpy as np
import pytest

from peaknet_serve.decode.limits import DecodeLimits
from peaknet_serve.decode.raw import decode_raw
from peaknet_serve.errors import BadRequest, PayloadTooLarge

DTYPES = ["uint8", "uint16", "int16", "int32", "uint32", "float16", "float32", "float64"]


def sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random(shape) * 200).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "frames"),
    [((5, 7), (1, 1, 5, 7)), ((3, 5, 7), (1, 3, 5, 7)), ((2, 3, 5, 7), (2, 3, 5, 7))],
)
def test_round_trip_every_dtype_and_layout_as_a_zero_copy_view(dtype, shape, frames):
    array = sample(dtype, shape)
    body = array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    decoded = decode_raw(memoryview(body), {"dtype": dtype, "shape": ",".join(map(str, shape))}, DecodeLimits())
    assert decoded.shape == frames and decoded.dtype == np.dtype(dtype)
    assert decoded.dtype.isnative and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded.reshape(shape), array)
    assert np.shares_memory(decoded, np.frombuffer(body, np.uint8))


def test_misaligned_body_is_copied_once_keeping_its_dtype():
    array = sample("float32", (4, 6))
    storage = bytearray(1 + array.nbytes)
    storage[1:] = array.tobytes()
    body = memoryview(storage)[1:]
    decoded = decode_raw(body, {"dtype": "float32", "shape": "4,6"}, DecodeLimits())
    assert decoded.dtype == np.float32 and decoded.ctypes.data % 4 == 0
    np.testing.assert_array_equal(decoded[0, 0], array)


def test_nan_and_inf_pass_through_untouched():
    array = np.array([[np.nan, np.inf], [-np.inf, 1.0]], np.float32)
    decoded = decode_raw(memoryview(array.tobytes()), {"dtype": "float32", "shape": "2,2"}, DecodeLimits())
    np.testing.assert_array_equal(decoded[0, 0], array)


@pytest.mark.parametrize("missing", ["dtype", "shape"])
def test_missing_dtype_or_shape_says_which(missing):
    options = {"dtype": "uint16", "shape": "2,2"}
    del options[missing]
    with pytest.raises(BadRequest) as info:
        decode_raw(memoryview(bytes(8)), options, DecodeLimits())
    assert info.value.type == "missing_option"
    assert f"X-{missing.capitalize()}" in info.value.message


@pytest.mark.parametrize("size", [7, 9, 0 + 4])
def test_body_size_must_match_dtype_times_shape(size):
    with pytest.raises(BadRequest) as info:
        decode_raw(memoryview(bytes(size)), {"dtype": "uint16", "shape": "2,2"}, DecodeLimits())
    assert info.value.type == "size_mismatch"
    assert "needs 8 bytes" in info.value.message and f"has {size} bytes" in info.value.message


def test_size_mismatch_hints_at_a_container_sent_as_octet_stream():
    body = b"\x93NUMPY" + bytes(100)
    with pytest.raises(BadRequest) as info:
        decode_raw(memoryview(body), {"dtype": "uint8", "shape": "3,3"}, DecodeLimits())
    assert "application/x-npy" in info.value.message


def test_absurd_shape_is_413_before_anything_is_allocated():
    with pytest.raises(PayloadTooLarge) as info:
        decode_raw(memoryview(bytes(8)), {"dtype": "float64", "shape": "1000000,1000000"}, DecodeLimits())
    assert info.value.type == "too_large"


def test_limits_are_checked_before_the_size():
    limits = DecodeLimits(max_pixels=10)
    with pytest.raises(PayloadTooLarge):
        decode_raw(memoryview(bytes(3)), {"dtype": "uint8", "shape": "4,4"}, limits)


@pytest.mark.parametrize(
    ("dtype", "shape", "kind"),
    [
        ("int64", "2,2", "unsupported_dtype"),
        ("uint16", "2", "bad_shape"),
        ("uint16", "0,4", "bad_shape"),
        ("uint16", "two,2", "bad_shape"),
    ],
)
def test_bad_dtype_or_shape(dtype, shape, kind):
    with pytest.raises(BadRequest) as info:
        decode_raw(memoryview(bytes(8)), {"dtype": dtype, "shape": shape}, DecodeLimits())
    assert info.value.type == kind
