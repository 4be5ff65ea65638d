import numpy as np
import pytest

from peaknet_serve.decode.dtypes import WIRE_DTYPES, dtype_from_name, wire_dtype_name
from peaknet_serve.errors import BadRequest

NAMES = ["uint8", "uint16", "int16", "int32", "uint32", "float16", "float32", "float64"]


def test_wire_dtypes_are_exactly_the_documented_eight():
    assert list(WIRE_DTYPES) == NAMES
    assert all(dtype.isnative for dtype in WIRE_DTYPES.values())


@pytest.mark.parametrize("name", NAMES)
def test_names_parse_case_and_space_insensitively(name):
    assert dtype_from_name(f" {name.upper()} ") == np.dtype(name)


@pytest.mark.parametrize("name", ["int8", "int64", "uint64", "bool", "complex64", "<u2", "", "x" * 500])
def test_other_names_are_refused_listing_the_accepted_ones(name):
    with pytest.raises(BadRequest) as info:
        dtype_from_name(name)
    assert info.value.type == "unsupported_dtype"
    assert "uint16" in info.value.message and "float64" in info.value.message
    assert len(info.value.message) < 300  # a hostile name is clipped


@pytest.mark.parametrize("name", NAMES)
def test_wire_name_is_found_in_both_byte_orders(name):
    assert wire_dtype_name(np.dtype(name)) == name
    assert wire_dtype_name(np.dtype(name).newbyteorder(">")) == name


@pytest.mark.parametrize(
    "dtype",
    [
        np.dtype("O"),
        np.dtype([("a", "<u2")]),
        np.dtype("U4"),
        np.dtype("V8"),
        np.dtype("i8"),
        np.dtype("?"),
        np.dtype(("u2", (2,))),
        np.dtype("u2", metadata={"enum": {"a": 1}}),
    ],
)
def test_non_pixel_dtypes_have_no_wire_name(dtype):
    assert wire_dtype_name(dtype) is None
