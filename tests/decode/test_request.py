"""decode_request end to end: Content-Type dispatch, sniffing, options, errors, zero copy."""

import io

import h5py
import numpy as np
import pytest

from peaknet_serve.decode import DecodedFrames, DecodeLimits, decode_hdf5, decode_request
from peaknet_serve.errors import BadRequest, PayloadTooLarge, RequestError, UnsupportedMediaType

FRAME = (np.arange(2 * 4 * 6) % 17).astype(np.uint16).reshape(2, 4, 6)
RAW_OPTIONS = {"X-Dtype": "uint16", "X-Shape": "2,4,6"}


def npy_body(array=FRAME) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def hdf5_body(array=FRAME, path="/entry_1/data_1/data") -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        file.create_dataset(path, data=array, compression="gzip", chunks=(1, *array.shape[1:]))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "options", "encoding"),
    [
        (FRAME.tobytes(), "application/octet-stream", RAW_OPTIONS, "raw"),
        (FRAME.tobytes(), None, {"dtype": "uint16", "shape": "2,4,6"}, "raw"),
        (npy_body(), "application/x-npy", {}, "npy"),
        (npy_body(), None, {}, "npy"),
        (npy_body(), "application/npy; q=1", {}, "npy"),
    ],
)
def test_raw_and_npy_encodings_give_the_same_frames_as_zero_copy_views(body, content_type, options, encoding):
    decoded = decode_request(body, content_type, options)
    assert isinstance(decoded, DecodedFrames) and decoded.encoding == encoding
    assert decoded.array.shape == (1, 2, 4, 6) and decoded.dtype_name == "uint16"
    np.testing.assert_array_equal(decoded.array[0], FRAME)
    assert np.shares_memory(decoded.array, np.frombuffer(body, np.uint8))


@pytest.mark.parametrize("content_type", ["application/x-hdf5", "application/x-cxi", "application/x-hdf", None])
def test_hdf5_reads_a_3d_stack_as_frames_through_the_default_sandbox(content_type):
    decoded = decode_request(hdf5_body(), content_type, {})
    assert decoded.encoding == "hdf5" and decoded.array.shape == (2, 1, 4, 6)
    np.testing.assert_array_equal(decoded.array[:, 0], FRAME)


def test_x_dataset_as_header_or_form_field_and_bytearray_values():
    body = hdf5_body(path="/scan/images")
    for options in ({"X-Dataset": "/scan/images"}, {"dataset": bytearray(b"/scan/images")}):
        decoded = decode_request(bytearray(body), None, options, hdf5_reader=decode_hdf5)
        np.testing.assert_array_equal(decoded.array[:, 0], FRAME)


def test_octet_stream_means_raw_even_for_an_npy_body():
    with pytest.raises(BadRequest) as info:
        decode_request(npy_body(), "application/octet-stream", RAW_OPTIONS)
    assert info.value.type == "size_mismatch" and "application/x-npy" in info.value.message


def test_multipart_form_data_type_sniffs_like_a_form_field():
    assert decode_request(npy_body(), "multipart/form-data; boundary=x", {}).encoding == "npy"


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "application/x-npy", "application/x-hdf5"])
def test_empty_body_is_400_whatever_the_type(content_type):
    with pytest.raises(BadRequest) as info:
        decode_request(b"", content_type, RAW_OPTIONS)
    assert info.value.type == "empty_body"


def test_unknown_type_is_415_even_for_an_empty_body():
    with pytest.raises(UnsupportedMediaType):
        decode_request(b"", "image/png", {})


def test_declared_type_contradicting_the_magic_bytes_is_400():
    with pytest.raises(BadRequest) as info:
        decode_request(hdf5_body(), "application/x-npy", {})
    assert info.value.type == "content_type_mismatch" and "application/x-hdf5" in info.value.message


def test_body_over_the_limit_is_413_before_decoding():
    with pytest.raises(PayloadTooLarge):
        decode_request(b"\x00" * 101, "application/octet-stream", {}, DecodeLimits(max_body_bytes=100))


def test_absurd_shape_header_is_413():
    with pytest.raises(PayloadTooLarge):
        decode_request(b"\x00" * 8, None, {"X-Dtype": "uint8", "X-Shape": "1000000,1000000"})


def test_limits_apply_to_every_encoding():
    limits = DecodeLimits(max_panels_per_frame=1)
    for body, content_type, options in ((FRAME.tobytes(), None, RAW_OPTIONS), (npy_body(), None, {})):
        with pytest.raises(PayloadTooLarge):
            decode_request(body, content_type, options, limits)
    with pytest.raises(PayloadTooLarge):
        decode_request(hdf5_body(), None, {}, DecodeLimits(max_frames=1))


@pytest.mark.parametrize("body", ["a string", {"json": True}, None])
def test_non_binary_bodies_are_400(body):
    with pytest.raises(BadRequest) as info:
        decode_request(body, None, {})
    assert info.value.type == "bad_body"


def test_every_error_serialises_to_the_documented_json():
    bad_requests = [
        (b"x", "text/csv", {}),
        (b"", None, {}),
        (b"\x00" * 3, None, {"dtype": "uint16", "shape": "2"}),
        (b"\x00" * 3, None, {"dtype": "uint16"}),
        (b"\x93NUMPY\x01\x00\x02\x00{}", None, {}),
        (b"\x89HDF\r\n\x1a\n" + bytes(64), None, {}),
    ]
    for body, content_type, options in bad_requests:
        with pytest.raises(RequestError) as info:
            decode_request(body, content_type, options)
        error = info.value.to_json()["error"]
        assert set(error) == {"type", "message", "status"} and error["status"] in (400, 413, 415)


def test_float_frames_with_nan_and_inf_decode_untouched():
    frame = np.array([[np.nan, 1.0], [np.inf, -np.inf]], np.float32)
    decoded = decode_request(frame.tobytes(), None, {"x-dtype": "float32", "x-shape": "2,2"})
    np.testing.assert_array_equal(decoded.array[0, 0], frame)
