import io

import h5py
import numpy as np
import pytest

from peaknet_serve.decode.media import (
    HDF5_MAGIC,
    NPY_MAGIC,
    confirm_encoding,
    declared_encoding,
    has_hdf5_signature,
    media_type,
    sniff_encoding,
)
from peaknet_serve.errors import BadRequest, UnsupportedMediaType


def npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 2), np.uint16))
    return buffer.getvalue()


def hdf5_bytes(userblock_size: int = 0) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=userblock_size) as file:
        file["d"] = np.zeros((2, 2), np.uint16)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        ("application/octet-stream", "raw"),
        ("application/x-npy", "npy"),
        ("application/npy", "npy"),
        ("application/x-hdf5", "hdf5"),
        ("application/x-hdf", "hdf5"),
        ("application/x-cxi", "hdf5"),
        ("Application/X-HDF5; charset=binary", "hdf5"),
        (b"application/x-npy", "npy"),
        ("multipart/form-data; boundary=xyz", None),
        (None, None),
        ("", None),
        ("  ;q=1", None),
    ],
)
def test_declared_encoding(content_type, encoding):
    assert declared_encoding(content_type) == encoding


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/tiff", "application/x-npz"])
def test_unknown_types_are_415_listing_the_accepted_ones(content_type):
    with pytest.raises(UnsupportedMediaType) as info:
        declared_encoding(content_type)
    assert info.value.status == 415 and info.value.type == "unsupported_media_type"
    assert "application/x-npy" in info.value.message and "application/x-hdf5" in info.value.message


def test_media_type_strips_parameters():
    assert media_type("application/x-npy ; charset=utf-8") == "application/x-npy"


def test_sniffing_by_magic_bytes():
    assert sniff_encoding(memoryview(npy_bytes())) == "npy"
    assert sniff_encoding(memoryview(hdf5_bytes())) == "hdf5"
    assert sniff_encoding(memoryview(b"\x00" * 100)) == "raw"
    assert sniff_encoding(memoryview(b"")) == "raw"


def test_hdf5_signature_is_also_found_after_a_user_block():
    body = hdf5_bytes(userblock_size=1024)
    assert body[:8] != HDF5_MAGIC
    assert has_hdf5_signature(memoryview(body))
    assert confirm_encoding("hdf5", memoryview(body)) == "hdf5"
    assert not has_hdf5_signature(memoryview(b"x" * 700 + HDF5_MAGIC))


def test_octet_stream_stays_raw_even_with_a_file_signature():
    assert confirm_encoding("raw", memoryview(npy_bytes())) == "raw"
    assert confirm_encoding("raw", memoryview(hdf5_bytes())) == "raw"


def test_no_declared_type_sniffs():
    assert confirm_encoding(None, memoryview(npy_bytes())) == "npy"
    assert confirm_encoding(None, memoryview(hdf5_bytes())) == "hdf5"
    assert confirm_encoding(None, memoryview(b"\x01\x02")) == "raw"


@pytest.mark.parametrize(
    ("declared", "body", "hint"),
    [
        ("npy", hdf5_bytes(), "application/x-hdf5"),
        ("hdf5", npy_bytes(), "application/x-npy"),
        ("npy", b"\x00" * 64, ""),
        ("hdf5", NPY_MAGIC[:3], ""),
    ],
)
def test_declared_type_and_magic_bytes_must_agree(declared, body, hint):
    with pytest.raises(BadRequest) as info:
        confirm_encoding(declared, memoryview(body))
    assert info.value.type == "content_type_mismatch"
    assert hint in info.value.message
