"""Open Inference Protocol request decoding, on request bodies built by the real Triton HTTP client."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peaknet_serve.decode import DecodeLimits
from peaknet_serve.decode.oip import (
    OIP_DATATYPES,
    RequestedOutput,
    decode_oip_request,
    is_oip_request,
)
from peaknet_serve.errors import RequestError

httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")

SMALL = DecodeLimits(max_body_bytes=1 << 20, max_pixels=4 * 2 * 64 * 96, max_frames=4, max_json_bytes=1 << 20)


def triton_body(array: np.ndarray, datatype: str, *, binary: bool = True, outputs=None, request_id: str = ""):
    """(body, headers) exactly as tritonclient sends them to POST /v2/models/peaknet/infer."""
    tensor = httpclient.InferInput("frames", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id=request_id
    )
    headers = {} if json_size is None else {"inference-header-content-length": str(json_size)}
    return bytearray(body), headers


def json_body(request: dict, tail: bytes = b"", **headers: str):
    text = json.dumps(request).encode()
    if tail:
        headers = {"inference-header-content-length": str(len(text)), **headers}
    return bytearray(text + tail), headers


def frames_input(datatype="UINT16", shape=(1, 2, 4, 6), **fields):
    return {"inputs": [{"name": "frames", "datatype": datatype, "shape": list(shape), **fields}]}


def error_of(body, headers, limits=SMALL) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_oip_request(body, headers, limits)
    return info.value


@pytest.mark.parametrize("datatype", sorted(OIP_DATATYPES))
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_in_both_tensor_forms(datatype, binary):
    rng = np.random.default_rng(1)
    dtype = OIP_DATATYPES[datatype]
    array = (rng.random((2, 2, 8, 12)) * 200).astype(dtype)
    body, headers = triton_body(array, datatype, binary=binary)
    request = decode_oip_request(body, headers, SMALL)
    assert request.frames.array.dtype == dtype
    assert request.frames.array.flags.c_contiguous
    np.testing.assert_array_equal(request.frames.array, array)
    assert request.frames.encoding == "oip"


@pytest.mark.parametrize(
    ("shape", "frames"), [((64, 96), (1, 1, 64, 96)), ((2, 64, 96), (1, 2, 64, 96)), ((3, 2, 64, 96), (3, 2, 64, 96))]
)
def test_layouts(shape, frames):
    array = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    request = decode_oip_request(*triton_body(array, "UINT16"), SMALL)
    assert request.frames.array.shape == frames
    np.testing.assert_array_equal(request.frames.array.reshape(shape), array)


def test_binary_tensor_is_a_view_of_the_body_when_aligned():
    array = np.arange(2 * 4 * 6, dtype=np.uint16).reshape(2, 4, 6)
    header = frames_input("UINT16", array.shape, parameters={"binary_data_size": array.nbytes})
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # JSON may end in whitespace: pad the header to 8 bytes
    body = bytearray(text + array.tobytes())
    request = decode_oip_request(body, {"inference-header-content-length": str(len(text))}, SMALL)
    assert np.shares_memory(request.frames.array, np.frombuffer(body, dtype=np.uint8))
    np.testing.assert_array_equal(request.frames.array[0], array)


def test_nested_json_data_is_read_row_major():
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    body, headers = json_body(frames_input("FP32", array.shape, data=array.tolist()))
    np.testing.assert_array_equal(decode_oip_request(body, headers, SMALL).frames.array[0], array)


def test_requested_outputs_id_and_binary_flags():
    array = np.zeros((64, 96), np.uint16)
    body, headers = triton_body(array, "UINT16", request_id="frame-17")
    request = decode_oip_request(body, headers, SMALL)
    assert request.id == "frame-17"
    # tritonclient asks for every output in binary when no outputs are named
    assert request.outputs == (RequestedOutput("num_peaks", True), RequestedOutput("peaks", True))

    outputs = [httpclient.InferRequestedOutput("peaks", binary_data=False)]
    request = decode_oip_request(*triton_body(array, "UINT16", outputs=outputs), SMALL)
    assert request.outputs == (RequestedOutput("peaks", False),)

    body, headers = json_body(frames_input(shape=(1, 2), data=[1, 2]))
    assert decode_oip_request(body, headers, SMALL).outputs == (
        RequestedOutput("num_peaks", False),
        RequestedOutput("peaks", False),
    )


@pytest.mark.parametrize("datatype", ["BOOL", "INT8", "INT64", "UINT64", "BF16", "BYTES", "uint16", 16, None])
def test_unsupported_datatypes(datatype):
    error = error_of(*json_body(frames_input(datatype, (1, 2), data=[1, 2])))
    assert (error.status, error.type) == (400, "unsupported_dtype")
    assert "UINT16" in error.message


@pytest.mark.parametrize("shape", [[6], [1, 1, 1, 2, 3], [0, 4], [-2, 3], [2.0, 3], [True, 3], "2,3", None])
def test_bad_shapes(shape):
    request = {"inputs": [{"name": "frames", "datatype": "UINT8", "shape": shape, "data": [0] * 6}]}
    error = error_of(*json_body(request))
    assert (error.status, error.type) == (400, "bad_shape")


def test_declared_shape_over_the_limits_is_refused_before_reading():
    huge = frames_input("FP64", (64, 64, 8192, 8192), parameters={"binary_data_size": 8 * 64 * 64 * 8192 * 8192})
    error = error_of(*json_body(huge, b"\x00" * 16))
    assert (error.status, error.type) == (413, "too_large")
    big_json = frames_input("UINT8", (1, 2), data=[0, 0], padding="x" * (2 << 20))
    error = error_of(*json_body(big_json), limits=DecodeLimits(max_json_bytes=1 << 20))
    assert (error.status, error.type) == (413, "too_large")


@pytest.mark.parametrize(("declared", "tail"), [(24, 23), (23, 23), (24, 25), (0, 0)])
def test_binary_sizes_must_agree(declared, tail):
    request = frames_input("UINT16", (3, 4), parameters={"binary_data_size": declared})
    error = error_of(*json_body(request, b"\x01" * tail) if tail else json_body(request))
    assert (error.status, error.type) == (400, "size_mismatch")


def test_bytes_after_a_json_only_tensor():
    error = error_of(*json_body(frames_input("UINT8", (1, 2), data=[1, 2]), b"\x00\x00"))
    assert (error.status, error.type) == (400, "size_mismatch")


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1e3", "99999", " "])
def test_bad_inference_header_length(value):
    body, _ = json_body(frames_input("UINT8", (1, 2), data=[1, 2]))
    error = error_of(body, {"inference-header-content-length": value})
    assert (error.status, error.type) == (400, "bad_inference_header")


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe{}", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b"[" * 100000 + b"]" * 100000, "bad_json"),
        (b"{}", "missing_input"),
        (b'{"inputs": []}', "missing_input"),
        (b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2], "data": [1, 2]}]}', "unknown_input"),
        (
            b'{"inputs": [{"name": "frames", "datatype": "UINT8", "shape": [1, 2], "data": [1, 2]},'
            b' {"name": "frames", "datatype": "UINT8", "shape": [1, 2], "data": [1, 2]}]}',
            "unknown_input",
        ),
        (b'{"inputs": [{"name": "frames", "datatype": "UINT8", "shape": [1, 2]}]}', "missing_data"),
        (
            b'{"inputs": [{"name": "frames", "datatype": "UINT8", "shape": [1, 2], "data": [1, 2]}], "id": 7}',
            "bad_json",
        ),
        (
            b'{"inputs": [{"name": "frames", "datatype": "UINT8", "shape": [1, 2], "data": [1, 2]}],'
            b' "outputs": [{"name": "mask"}]}',
            "unknown_output",
        ),
        (
            b'{"inputs": [{"name": "frames", "datatype": "UINT8", "shape": [1, 2], "data": [1, 2]}],'
            b' "parameters": {"binary_data_output": "yes"}}',
            "bad_parameters",
        ),
    ],
)
def test_malformed_requests(body, kind):
    error = error_of(bytearray(body), {})
    assert (error.status, error.type) == (400, kind)


@pytest.mark.parametrize(
    ("datatype", "data", "kind"),
    [
        ("UINT16", [1, 70000], "bad_tensor_data"),
        ("UINT16", [-1, 2], "bad_tensor_data"),
        ("UINT16", [1.5, 2], "bad_tensor_data"),
        ("FP32", [True, False], "bad_tensor_data"),
        ("FP32", ["1", "2"], "bad_tensor_data"),
        ("FP32", [[1, 2], [3]], "bad_tensor_data"),
        ("INT32", [2**80, 1], "bad_tensor_data"),
        ("FP32", [1, 2, 3], "size_mismatch"),
        ("FP32", [], "size_mismatch"),
    ],
)
def test_bad_json_tensor_data(datatype, data, kind):
    error = error_of(*json_body(frames_input(datatype, (1, 2), data=data)))
    assert (error.status, error.type) == (400, kind)


def test_recognises_protocol_requests():
    array = np.zeros((4, 6), np.uint16)
    for binary in (True, False):
        body, headers = triton_body(array, "UINT16", binary=binary)
        assert is_oip_request(headers, memoryview(body))
    assert is_oip_request({"content-type": "application/json"}, memoryview(b"garbage"))
    assert is_oip_request({}, memoryview(b'  \n{"inputs": []}'))
    raw = memoryview(b"{" + bytes(11))
    assert not is_oip_request({"content-type": "application/octet-stream"}, raw)
    assert not is_oip_request({"x-dtype": "uint8", "x-shape": "3,4"}, raw)
    assert not is_oip_request({}, memoryview(b"\x93NUMPY\x01\x00"))
    assert not is_oip_request({"content-type": "multipart/form-data; boundary=x"}, memoryview(b"{"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["frames", "x"]),
        "datatype": st.sampled_from([*OIP_DATATYPES, "BOOL"]),
        "shape": st.lists(st.integers(-2, 5), max_size=5),
    },
    optional={
        "data": json_values,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size"]), st.integers(-1, 400) | json_values),
    },
)


@settings(max_examples=300, deadline=None)
@given(inputs=st.lists(tensors, max_size=2), extra=json_values, tail=st.binary(max_size=64), with_length=st.booleans())
def test_any_request_decodes_or_gets_a_request_error(inputs, extra, tail, with_length):
    request = {"inputs": inputs, "outputs": extra, "parameters": extra}
    text = json.dumps(request).encode()
    headers = {"inference-header-content-length": str(len(text))} if with_length else {}
    try:
        decoded = decode_oip_request(bytearray(text + tail), headers, SMALL)
    except RequestError as error:
        assert 400 <= error.status < 500
    else:
        assert decoded.frames.array.ndim == 4
