"""A request's own bad-pixel mask (the multipart part ``mask``): shapes, dtypes, raw bytes, refusals."""

import io
import struct

import numpy as np
import pytest

from peaknet_serve.decode import DecodeLimits, decode_request
from peaknet_serve.decode.mask import accepted_mask_shapes, decode_mask
from peaknet_serve.decode.options import normalise_options
from peaknet_serve.errors import BadRequest

FRAMES = (3, 2, 4, 6)  # (N, P, H, W)
LIMITS = DecodeLimits()
MASK_DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "int32", "uint32", "int64", "uint64"]


def npy(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, **kwargs)
    return buffer.getvalue()


def good_of(shape, seed=0) -> np.ndarray:
    """A mask with about a third of its pixels bad (and at least one good)."""
    good = np.random.default_rng(seed).random(shape) > 0.3
    good.flat[0] = True
    return good


def bad_mask(part, frames=FRAMES, limits=LIMITS) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        decode_mask(part, frames, limits)
    assert info.value.status == 400 and info.value.type == "bad_mask"
    return info.value


@pytest.mark.parametrize("dtype", MASK_DTYPES)
def test_one_mask_for_every_frame_in_any_bool_or_integer_dtype(dtype):
    good = good_of(FRAMES[1:])
    values = good.astype(dtype) * (7 if dtype != "bool" else 1)  # any non-zero value is good
    decoded = decode_mask(npy(values), FRAMES, LIMITS)
    assert decoded.shape == (1, *FRAMES[1:]) and decoded.dtype == np.bool_ and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded[0], good)


def test_one_mask_per_frame_and_a_2d_mask_of_single_panel_frames():
    per_frame = good_of(FRAMES, seed=1)
    np.testing.assert_array_equal(decode_mask(npy(per_frame.astype(np.uint8)), FRAMES, LIMITS), per_frame)
    single = (3, 1, 4, 6)
    panel = good_of((4, 6), seed=2)
    decoded = decode_mask(npy(panel), single, LIMITS)
    assert decoded.shape == (1, 1, 4, 6)
    np.testing.assert_array_equal(decoded[0, 0], panel)
    assert accepted_mask_shapes(single) == [(1, 4, 6), (3, 1, 4, 6), (4, 6)]
    assert accepted_mask_shapes(FRAMES) == [(2, 4, 6), (3, 2, 4, 6)]


def test_negative_values_and_fortran_order_read_as_stored():
    good = good_of(FRAMES[1:], seed=3)
    values = np.where(good, -1, 0).astype(np.int16)
    np.testing.assert_array_equal(decode_mask(npy(np.asfortranarray(values)), FRAMES, LIMITS)[0], good)


def test_raw_uint8_bytes_for_every_frame_or_frame_by_frame():
    once, per_frame = good_of(FRAMES[1:], seed=4), good_of(FRAMES, seed=5)
    np.testing.assert_array_equal(decode_mask(once.astype(np.uint8).tobytes(), FRAMES, LIMITS)[0], once)
    decoded = decode_mask(bytearray((per_frame * 255).astype(np.uint8).tobytes()), FRAMES, LIMITS)
    np.testing.assert_array_equal(decoded, per_frame)


@pytest.mark.parametrize(
    "shape",
    [(4, 6), (1, 2, 4, 6), (2, 4, 7), (2, 6, 4), (3, 2, 4), (4, 2, 4, 6), (6, 4, 6), (2, 2, 4, 6, 1), (48,), ()],
)
def test_a_shape_that_does_not_fit_the_frames_is_bad_mask_naming_the_accepted_ones(shape):
    error = bad_mask(npy(np.ones(shape, np.uint8)))
    assert str(shape) in error.message and "(2, 4, 6), (3, 2, 4, 6)" in error.message
    assert "non-zero = good" in error.message


@pytest.mark.parametrize("length", [1, 47, 49, 2 * 48, 4 * 48])
def test_raw_bytes_of_another_length_are_bad_mask(length):
    error = bad_mask(b"\x01" * length)
    assert f"the part has {length}" in error.message and "48 for every frame or 144" in error.message


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", ">u2", ">i4", "U1"])
def test_float_big_endian_and_other_dtypes_are_bad_mask(dtype):
    error = bad_mask(npy(np.ones(FRAMES[1:], dtype)))
    assert "is not bool or an integer dtype" in error.message


@pytest.mark.parametrize(
    "part",
    [
        npy(np.ones(FRAMES[1:], np.uint8))[:-1],  # truncated data
        npy(np.ones(FRAMES[1:], np.uint8)) + b"\x01",  # trailing bytes
        npy(np.ones(FRAMES[1:], np.uint8))[:20],  # ends inside the header
        b"\x93NUMPY\x01\x00" + struct.pack("<H", 12) + b"not a dict\n",
        npy(np.array([{"a": 1}], dtype=object), allow_pickle=True),  # a pickle
        npy(np.zeros(2, dtype=[("a", "u1"), ("b", "u1")])),  # structured
    ],
)
def test_malformed_npy_parts_are_bad_mask(part):
    error = bad_mask(part)
    assert error.message.startswith("the mask part is not a bad-pixel mask of these (3, 2, 4, 6) frames")


def test_an_empty_an_oversized_and_an_all_bad_part_are_bad_mask():
    assert "empty" in bad_mask(b"").message
    small = DecodeLimits(max_body_bytes=100)
    assert "over the limit of 100 bytes" in bad_mask(npy(np.ones(FRAMES[1:], np.uint8)), limits=small).message
    assert "every pixel is marked bad" in bad_mask(npy(np.zeros(FRAMES, bool))).message
    assert "HDF5" in bad_mask(b"\x89HDF\r\n\x1a\n" + b"\0" * 100).message


def test_a_huge_declared_shape_is_refused_before_anything_is_allocated():
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 4, 6000000000000), }"
    part = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\x01"
    assert "(2, 4, 6000000000000)" in bad_mask(part).message


def test_decode_request_returns_the_mask_with_the_frames():
    frames = np.arange(np.prod(FRAMES), dtype=np.uint16).reshape(FRAMES)
    good = good_of(FRAMES[1:], seed=6)
    decoded = decode_request(npy(frames), None, {}, mask=npy(good))
    assert decoded.array.shape == FRAMES and decoded.good_pixels.shape == (1, *FRAMES[1:])
    np.testing.assert_array_equal(decoded.good_pixels[0], good)
    assert decode_request(npy(frames), None, {}).good_pixels is None
    with pytest.raises(BadRequest) as info:  # checked against the decoded frames' shape
        decode_request(npy(frames[:1]), None, {}, mask=npy(good_of(FRAMES)))
    assert info.value.type == "bad_mask" and "(1, 2, 4, 6) frames" in info.value.message


@pytest.mark.parametrize("key", ["X-Mask", "x-mask", "mask", "MASK"])
def test_a_mask_option_is_bad_option_saying_to_send_a_part(key):
    with pytest.raises(BadRequest) as info:
        normalise_options({key: "1"})
    assert info.value.type == "bad_option" and "file part 'mask'" in info.value.message
    with pytest.raises(BadRequest) as info:
        decode_request(b"\0" * 4, "application/octet-stream", {"X-Dtype": "uint16", "X-Shape": "1,2", key: "x"})
    assert info.value.type == "bad_option"
