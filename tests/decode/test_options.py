import pytest

from peaknet_serve.decode.options import MAX_OPTION_CHARS, normalise_options, parse_shape
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
    [("16,352,384", (16, 352, 384)), (" (16, 352, 384) ", (16, 352, 384)), ("[2,3]", (2, 3)),
     ("16x352x384", (16, 352, 384)), ("7", (7,)), ("1,2,3,", (1, 2, 3)), ("1000000,1000000", (10**6, 10**6))],
)
def test_shape_spellings(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "16,,352", "-1,4", "1.5,2", "a,b", "16;352", "١,٢", "1 2", "(1,2"])
def test_malformed_shapes_are_bad_shape(text):
    with pytest.raises(BadRequest) as info:
        parse_shape(text)
    assert info.value.type == "bad_shape"
    assert "16,352,384" in info.value.message
