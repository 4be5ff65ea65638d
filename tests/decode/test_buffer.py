import io

import numpy as np
import pytest

from peaknet_serve.decode.buffer import ReadOnlyMemoryFile, array_from_bytes, byte_view
from peaknet_serve.errors import BadRequest


@pytest.mark.parametrize("body", [b"abcd", bytearray(b"abcd"), memoryview(b"abcd")])
def test_byte_view_accepts_bytes_like_without_copying(body):
    view = byte_view(body)
    assert view.format == "B" and view.ndim == 1 and bytes(view) == b"abcd"
    if not isinstance(body, bytes):
        assert np.shares_memory(np.frombuffer(view, np.uint8), np.frombuffer(body, np.uint8))


def test_byte_view_flattens_typed_memoryviews():
    array = np.arange(6, dtype=np.uint16).reshape(2, 3)
    view = byte_view(memoryview(array))
    assert len(view) == 12 and view.format == "B"


@pytest.mark.parametrize("body", ["text", {"json": 1}, None, 5, [1, 2]])
def test_non_binary_bodies_are_400(body):
    with pytest.raises(BadRequest) as info:
        byte_view(body)
    assert info.value.type == "bad_body"


def test_non_contiguous_body_is_400():
    with pytest.raises(BadRequest):
        byte_view(memoryview(np.arange(10, dtype=np.uint8))[::2])


def test_array_from_bytes_is_a_view_when_aligned_and_a_copy_when_not():
    data = bytearray(np.arange(8, dtype=np.float64).tobytes() + b"\x00")
    aligned = array_from_bytes(memoryview(data), np.dtype(np.float64), 8, 0)
    assert np.shares_memory(aligned, np.frombuffer(data, np.uint8))
    shifted = bytearray(b"\x00") + data[:-1]
    copied = array_from_bytes(memoryview(shifted), np.dtype(np.float64), 8, 1)
    assert not np.shares_memory(copied, np.frombuffer(shifted, np.uint8))
    assert copied.ctypes.data % 8 == 0
    np.testing.assert_array_equal(copied, np.arange(8, dtype=np.float64))


def test_read_only_memory_file_reads_seeks_and_refuses_writes():
    data = bytearray(b"0123456789")
    file = ReadOnlyMemoryFile(memoryview(data))
    assert file.read(3) == b"012"
    assert file.seek(-2, io.SEEK_END) == 8
    assert file.read() == b"89"
    assert file.read(5) == b""
    file.seek(2)
    file.seek(3, io.SEEK_CUR)
    assert file.tell() == 5 and file.read(1) == b"5"
    with pytest.raises(OSError):
        file.write(b"x")
    with pytest.raises(OSError):
        file.truncate(0)
    with pytest.raises(OSError):
        file.seek(-1)
    assert data == b"0123456789"
