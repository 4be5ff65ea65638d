import io
import struct

import numpy as np
import pytest

from peaknet_serve.decode.limits import DecodeLimits
from peaknet_serve.decode.npy import MAX_HEADER_BYTES, decode_npy, read_npy_header
from peaknet_serve.errors import BadRequest, PayloadTooLarge

DTYPES = ["uint8", "uint16", "int16", "int32", "uint32", "float16", "float32", "float64"]


def saved(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, **kwargs)
    return buffer.getvalue()


def handmade(header: str | bytes, data: bytes = b"", version: int = 1) -> bytes:
    """A .npy file with an arbitrary header text."""
    text = header.encode("latin1") if isinstance(header, str) else header
    length = struct.pack("<H" if version == 1 else "<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + length + text + data


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "frames"), [((5, 7), (1, 1, 5, 7)), ((3, 5, 7), (1, 3, 5, 7)), ((2, 3, 5, 7), (2, 3, 5, 7))]
)
def test_round_trip_every_dtype_and_layout_as_a_zero_copy_view(dtype, shape, frames):
    array = (np.random.default_rng(1).random(shape) * 100).astype(dtype)
    body = saved(array)
    decoded = decode_npy(memoryview(body), DecodeLimits())
    assert decoded.shape == frames and decoded.dtype == np.dtype(dtype) and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded.reshape(shape), array)
    assert np.shares_memory(decoded, np.frombuffer(body, np.uint8))


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_all_format_versions(version):
    array = np.arange(12, dtype=np.uint16).reshape(3, 4)
    decoded = decode_npy(memoryview(saved(array, version=version)), DecodeLimits())
    np.testing.assert_array_equal(decoded[0, 0], array)


def test_fortran_order_is_copied_into_c_order_in_its_own_dtype():
    array = np.asfortranarray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    body = saved(array)
    assert read_npy_header(memoryview(body)).fortran_order
    decoded = decode_npy(memoryview(body), DecodeLimits())
    assert decoded.flags.c_contiguous and decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded[0], array)


def test_nan_and_inf_pass_through():
    array = np.array([[np.nan, np.inf], [-np.inf, 0.5]], np.float16)
    np.testing.assert_array_equal(decode_npy(memoryview(saved(array)), DecodeLimits())[0, 0], array)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Evil(str(marker))
    body = saved(np.array([[payload, payload]], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest) as info:
        decode_npy(memoryview(body), DecodeLimits())
    assert info.value.type == "unsupported_dtype" and "pickle" in info.value.message
    assert not marker.exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((2, 2), dtype=[("a", "<u2"), ("b", "<f4")]), "structured"),
        (np.zeros((2, 2), dtype=">u2"), "big-endian"),
        (np.zeros((2, 2), dtype="<i8"), "not supported"),
        (np.zeros((2, 2), dtype="<U3"), "not supported"),
        (np.zeros((2, 2), dtype="?"), "not supported"),
        (np.zeros((2, 2), dtype="<c8"), "not supported"),
    ],
)
def test_non_pixel_dtypes_are_refused(array, words):
    with pytest.raises(BadRequest) as info:
        decode_npy(memoryview(saved(array)), DecodeLimits())
    assert info.value.type == "unsupported_dtype" and words in info.value.message


@pytest.mark.parametrize("cut", [3, 8, 9, 30, 127, 128 + 10])
def test_truncated_files_are_400(cut):
    body = saved(np.arange(64, dtype=np.float32).reshape(8, 8))[:cut]
    with pytest.raises(BadRequest) as info:
        decode_npy(memoryview(body), DecodeLimits())
    assert info.value.type in {"bad_npy", "size_mismatch"}


def test_trailing_bytes_are_a_size_mismatch():
    body = saved(np.zeros((4, 4), np.uint8)) + b"extra"
    with pytest.raises(BadRequest) as info:
        decode_npy(memoryview(body), DecodeLimits())
    assert info.value.type == "size_mismatch" and "16 bytes" in info.value.message


def test_a_tiny_file_declaring_a_huge_array_is_413_before_allocation():
    body = handmade("{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }\n")
    with pytest.raises(PayloadTooLarge):
        decode_npy(memoryview(body), DecodeLimits())


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<u2', 'fortran_order': False}",
        "{'descr': '<u2', 'fortran_order': False, 'shape': (2, 2), 'x': 1}",
        "[1, 2, 3]",
        "{'descr': '<u2', 'fortran_order': 0, 'shape': (2, 2)}",
        "{'descr': '<u2', 'fortran_order': False, 'shape': (2, -2)}",
        "{'descr': '<u2', 'fortran_order': False, 'shape': (2, True)}",
        "{'descr': '<u2', 'fortran_order': False, 'shape': [2, 2]}",
        "{'descr': 'not a dtype', 'fortran_order': False, 'shape': (2, 2)}",
        "__import__('os').system('true')",
        "{'descr': " + "(" * 500,
        "\x00\x01",
        "{" * 200 + "}" * 200,
    ],
)
def test_malformed_headers_are_bad_npy(header):
    with pytest.raises(BadRequest) as info:
        decode_npy(memoryview(handmade(header, bytes(8))), DecodeLimits())
    assert info.value.type == "bad_npy"


def test_unknown_versions_and_huge_headers_are_bad_npy():
    with pytest.raises(BadRequest, match="version 9.0"):
        decode_npy(memoryview(b"\x93NUMPY\x09\x00" + bytes(100)), DecodeLimits())
    with pytest.raises(BadRequest, match="header is"):
        decode_npy(memoryview(handmade(" " * (MAX_HEADER_BYTES + 1), version=2)), DecodeLimits())


def test_scalar_and_1d_arrays_are_bad_shape():
    for array in (np.array(3, np.uint16), np.arange(5, dtype=np.uint16)):
        with pytest.raises(BadRequest) as info:
            decode_npy(memoryview(saved(array)), DecodeLimits())
        assert info.value.type == "bad_shape"
