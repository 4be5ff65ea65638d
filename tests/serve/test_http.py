"""Request plumbing: Accept negotiation, conflicting inputs, repeated fields (through TorchServe's own Service)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ts.context import Context, RequestProcessor
from ts.service import Service

from peaknet_serve.decode.options import normalise_options
from peaknet_serve.errors import BadRequest, NotAcceptable
from peaknet_serve.serve.http import (
    REPEATED_FIELDS,
    accept_ranges,
    mark_repeated_fields,
    mask_label,
    request_headers,
    request_mask_part,
    request_payload,
    server_error,
    wants_cxi,
)

# -- Accept ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept, cxi",
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("application/x-hdf5", True),
        ("application/x-cxi", True),
        ("application/x-hdf5, */*", True),  # the exact range beats the wildcard
        ("application/x-hdf5;q=0.5, application/json", False),
        ("application/x-hdf5, application/json;q=0.9", True),
        ("application/x-hdf5;q=0, */*", False),  # q=0: never CXI
        ("application/json;q=0.1, application/x-hdf5;q=0, */*", False),  # ... not even through the alias
        ("application/x-cxi;q=0.3, application/json;q=0.2", True),
        ("application/x-hdf5;q=0", None),  # ... and nothing else acceptable
        ("application/*;q=0.2, application/x-hdf5;q=0.1", False),  # json via application/* at 0.2
        ("APPLICATION/X-HDF5 ; Q=1", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),  # a browser
        ("image/png", None),
        ("text/*", None),
        ("application/json;q=0, application/x-hdf5;q=0", None),
        ("application/x-hdf5;q=2", None),  # malformed q: the range is dropped
        ("application/x-hdf5;q=abc, application/json", False),
        ("nonsense", None),
    ],
)
def test_accept_negotiation(accept, cxi):
    headers = {} if accept is None else {"accept": accept}
    if cxi is None:
        with pytest.raises(NotAcceptable) as info:
            wants_cxi(headers)
        assert info.value.status == 406 and info.value.type == "not_acceptable"
        assert "application/json" in info.value.message
    else:
        assert wants_cxi(headers) is cxi


def test_accept_ranges_parse_q():
    assert accept_ranges("a/b;q=0.250;level=1, c/d ,x") == [("a/b", 0.25), ("c/d", 1.0)]


# -- conflicting inputs -------------------------------------------------------------------------


class Headers:
    """The one context method request_headers calls, over a real TorchServe Context."""

    def __init__(self, mapping: dict):
        self.context = Context("peaknet", ".", {}, 1, None, "0.12.0")
        self.context.request_processor = [RequestProcessor(mapping)]


def test_two_spellings_of_a_header_with_different_values_are_refused():
    context = Headers({"X-Dtype": "uint16", "x-dtype": "float32", "X-Shape": "1,2,3"}).context
    with pytest.raises(BadRequest) as info:
        request_headers(context, 0)
    assert info.value.type == "bad_option" and "x-dtype" in info.value.message


def test_two_spellings_with_the_same_value_and_unread_headers_pass():
    context = Headers(
        {
            "X-Dtype": "uint16",
            "x-dtype": " uint16",
            "User-Agent": "a",
            "user-agent": "b",
            "data": {"content-type": "application/x-npy"},
        }
    ).context
    headers, field_types = request_headers(context, 0)
    assert headers["x-dtype"].strip() == "uint16" and field_types == {"data": "application/x-npy"}


def test_form_shape_and_header_shape_must_agree():
    headers = {"content-type": "multipart/form-data; boundary=x", "x-shape": "1,2,64,96"}
    row = {"data": bytearray(b"\0" * 8), "shape": bytearray(b"2,2,64,96")}
    _, _, options = request_payload(row, headers, {})
    with pytest.raises(BadRequest) as info:
        normalise_options(options)
    assert info.value.type == "bad_option" and "X-Shape" in info.value.message
    row["shape"] = bytearray(b"1,2,64,96")
    assert normalise_options(request_payload(row, headers, {})[2])["shape"] == "1,2,64,96"


def test_query_parameters_of_a_plain_post_are_options_too():
    headers = {"content-type": "application/octet-stream", "x-dtype": "uint16"}
    body, content_type, options = request_payload({"body": b"xy", "dtype": "float32"}, headers, {})
    assert body == b"xy" and content_type == "application/octet-stream"
    with pytest.raises(BadRequest):
        normalise_options(options)


def test_a_row_marked_with_repeated_fields_is_refused():
    with pytest.raises(BadRequest) as info:
        request_payload({"data": b"x", REPEATED_FIELDS: ("data",)}, {}, {})
    assert info.value.type == "bad_option" and "'data'" in info.value.message


def test_torchserve_service_marks_repeated_fields():
    """The real ts.service.Service folds fields into a dict; once marked, repeats are recorded."""
    assert mark_repeated_fields() and mark_repeated_fields()  # idempotent
    batch = [
        {
            "requestId": b"a",
            "parameters": [
                {"name": "data", "contentType": "x", "value": b"1"},
                {"name": "data", "contentType": "x", "value": b"2"},
                {"name": "dtype", "contentType": None, "value": b"uint16"},
            ],
        },
        {
            "requestId": b"b",
            "parameters": [{"name": "body", "contentType": "x", "value": b"3"}],
            "headers": [{"name": b"X-Dtype", "value": b"uint16"}],
        },
    ]
    headers, rows, ids = Service.retrieve_data_for_inference(batch)
    assert rows[0]["data"] == b"2" and rows[0][REPEATED_FIELDS] == ("data",)  # TorchServe keeps the last
    assert REPEATED_FIELDS not in rows[1] and rows[1]["body"] == b"3"
    assert ids == {0: "a", 1: "b"} and headers[1].get_request_property("X-Dtype") == "uint16"
    with pytest.raises(BadRequest):
        request_payload(rows[0], {"content-type": "multipart/form-data; boundary=x"}, {})


MULTIPART = {"content-type": "multipart/form-data; boundary=x"}


def test_the_mask_is_the_file_part_mask_of_a_multipart_request():
    row = {"data": bytearray(b"frames"), "mask": bytearray(b"\x01\x00")}
    assert request_mask_part(row, MULTIPART, {"data": "application/x-npy", "mask": "application/octet-stream"}) == (
        b"\x01\x00"
    )
    assert request_mask_part({"data": b"frames"}, MULTIPART, {"data": "application/x-npy"}) is None
    assert request_mask_part({"body": b"frames"}, {"content-type": "application/octet-stream"}, {}) is None


@pytest.mark.parametrize(
    ("headers", "field_types", "said"),
    [
        (MULTIPART, {"mask": ""}, "a form field without a file name"),
        (MULTIPART, {}, "a form field without a file name"),
        ({"content-type": "application/octet-stream"}, {"mask": ""}, "a query parameter"),
        ({"content-type": "application/x-npy"}, {"mask": "application/octet-stream"}, "a query parameter"),
    ],
)
def test_a_mask_field_that_is_not_a_multipart_file_part_is_bad_option(headers, field_types, said):
    with pytest.raises(BadRequest) as info:
        request_mask_part({"body": b"frames", "mask": "1"}, headers, field_types)
    assert info.value.type == "bad_option" and said in info.value.message
    assert "file part 'mask'" in info.value.message


def test_a_field_without_a_content_type_reads_as_an_empty_one():
    context = Headers({"mask": {"content-type": None}, "data": {"content-type": "Application/X-Npy"}}).context
    assert request_headers(context, 0)[1] == {"mask": "", "data": "application/x-npy"}


def test_the_mask_echo_names_the_masks_that_apply():
    assert [mask_label(r, d) for r, d in [(False, False), (False, True), (True, False), (True, True)]] == [
        "none",
        "deployment",
        "request",
        "request+deployment",
    ]


def test_server_error_sets_retry_after():
    answer = server_error(503, "busy", "retry", retry_after_s=2.4)
    assert answer.headers == {"Retry-After": "2"} and answer.body["error"]["status"] == 503
    assert server_error(503, "busy", "retry", retry_after_s=0.1).headers == {"Retry-After": "1"}
    assert server_error(500, "x", "y").headers == {}


# -- any header value: a clear answer, never an exception of another kind ---------------------------


HEADER_TEXT = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=200)
MEDIA = st.sampled_from(
    [
        "application/json",
        "application/x-hdf5",
        "application/x-cxi",
        "application/*",
        "*/*",
        "image/png",
        "text/html",
        "application/npy",
        "x",
        "/",
        "*/json",
    ]
)
PARAMS = st.sampled_from(["", ";q=0", ";q=1", ";q=0.5", ";q=0.001", ";q=1.0001", ";q=", ";q=x", ";level=1", "; Q=0.2"])


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        HEADER_TEXT,
        st.lists(st.tuples(MEDIA, PARAMS), max_size=6).map(lambda parts: ", ".join(m + p for m, p in parts)),
    )
)
def test_any_accept_header_is_negotiated_or_406(accept):
    try:
        cxi = wants_cxi({"accept": accept})
    except NotAcceptable as error:
        assert error.status == 406 and error.to_json()["error"]["type"] == "not_acceptable"
    else:
        assert isinstance(cxi, bool)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "X-Dtype",
                "x-dtype",
                "X-DTYPE",
                "X-Shape",
                "x-shape",
                "Accept",
                "accept",
                "Content-Type",
                "content-type",
                "X-Other",
            ]
        ),
        HEADER_TEXT,
        max_size=8,
    ),
    st.dictionaries(
        st.sampled_from(["dtype", "shape", "dataset", "data", "body"]),
        st.one_of(HEADER_TEXT, st.binary(max_size=64)),
        max_size=5,
    ),
)
def test_any_headers_and_fields_give_options_or_bad_option(headers, row):
    context = Headers(headers).context
    try:
        parsed, field_types = request_headers(context, 0)
        body, content_type, options = request_payload(row, parsed, field_types)
        normalise_options(options)
    except BadRequest as error:
        assert error.status == 400 and error.type in ("bad_option", "bad_shape")
