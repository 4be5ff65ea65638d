import pytest

from peaknet_serve.decode.options import (
    MAX_OPTION_CHARS,
    normalise_options,
    parse_shape,
    parse_threshold,
    request_threshold,
)
from peaknet_serve.errors import BadRequest


def test_header_and_form_field_spellings_are_one_option():
    options = normalise_options({"X-Dtype": "uint16", "SHAPE": b"16,352,384", "x-dataset": bytearray(b"/d")})
    assert options == {"dtype": "uint16", "shape": "16,352,384", "dataset": "/d"}


def test_other_keys_and_non_string_keys_are_ignored():
    assert normalise_options({"Content-Type": "x", "X-Request-Id": "7", 3: "y"}) == {}
    assert normalise_options(None) == {}


def test_same_value_twice_is_fine_and_different_values_conflict():
    assert normalise_options({"X-Dtype": "uint16", "dtype": " uint16 "}) == {"dtype": "uint16"}
    with pytest.raises(BadRequest) as info:
        normalise_options({"X-Dtype": "uint16", "dtype": "float32"})
    assert info.value.type == "bad_option"


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe", "x" * (MAX_OPTION_CHARS + 1), b"x" * (10 * MAX_OPTION_CHARS), 12, None, ["uint16"]],
)
def test_values_that_are_not_short_text_are_bad_options(value):
    with pytest.raises(BadRequest) as info:
        normalise_options({"x-dtype": value})
    assert info.value.type == "bad_option"


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("16,352,384", (16, 352, 384)),
        (" (16, 352, 384) ", (16, 352, 384)),
        ("[2,3]", (2, 3)),
        ("16x352x384", (16, 352, 384)),
        ("7", (7,)),
        ("1,2,3,", (1, 2, 3)),
        ("1000000,1000000", (10**6, 10**6)),
    ],
)
def test_shape_spellings(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "16,,352", "-1,4", "1.5,2", "a,b", "16;352", "١,٢", "1 2", "(1,2"])
def test_malformed_shapes_are_bad_shape(text):
    with pytest.raises(BadRequest) as info:
        parse_shape(text)
    assert info.value.type == "bad_shape"
    assert "16,352,384" in info.value.message


def test_threshold_header_and_form_field_are_one_option():
    assert normalise_options({"X-Peak-Threshold": "0.3"}) == {"threshold": "0.3"}
    assert normalise_options({"threshold": b"0.3", "x-peak-threshold": " 0.3"}) == {"threshold": "0.3"}
    with pytest.raises(BadRequest) as info:
        normalise_options({"X-Peak-Threshold": "0.3", "threshold": "0.4"})
    assert info.value.type == "bad_option" and "X-Peak-Threshold" in info.value.message


@pytest.mark.parametrize(("text", "value"), [("0.5", 0.5), (" 0.05 ", 0.05), ("1e-3", 1e-3), ("0.999", 0.999)])
def test_thresholds_strictly_between_0_and_1(text, value):
    assert parse_threshold(text) == value
    assert request_threshold({"X-Peak-Threshold": text}) == value


@pytest.mark.parametrize("text", ["0", "1", "1.0", "-0.2", "1.5", "nan", "inf", "-inf", "", "half", "0.5,0.6"])
def test_other_thresholds_are_bad_options(text):
    with pytest.raises(BadRequest) as info:
        request_threshold({"threshold": text})
    assert info.value.type == "bad_option" and "between 0 and 1" in info.value.message


def test_no_threshold_option_is_none():
    assert request_threshold({"X-Dtype": "uint16"}) is None
    assert request_threshold(None) is None
