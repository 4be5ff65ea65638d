"""The bounded filter decoders against the real HDF5 filters (h5py + hdf5plugin write, we read)."""

from __future__ import annotations

import io
import subprocess
import sys
import tracemalloc

import h5py
import hdf5plugin
import numpy as np
import pytest

from peaknet_serve.decode.hdf5 import decode_hdf5
from peaknet_serve.decode.hdf5_filters import ChunkError, bit_unshuffle, fletcher32, strip_fletcher32
from peaknet_serve.decode.limits import DecodeLimits
from peaknet_serve.errors import BadRequest

from .hdf5_hostile import DATASET, FILTERS, encoded_chunk, hdf5_file, with_chunks


@pytest.mark.parametrize("length", [1, 2, 3, 719, 720, 721, 360 * 256 * 2 + 1, 360 * 256 * 4 + 2])
def test_fletcher32_is_hdf5s_checksum_and_catches_a_flipped_byte(length):
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    mask, stored = encoded_chunk("fletcher32", data, itemsize=1)
    assert mask == 0 and len(stored) == length + 4
    assert bytes(strip_fletcher32(memoryview(stored))) == data
    assert fletcher32(memoryview(data)) == int.from_bytes(stored[-4:], "little")
    damaged = bytearray(stored)
    damaged[length // 2] ^= 0x10
    with pytest.raises(ChunkError, match="checksum"):
        strip_fletcher32(memoryview(bytes(damaged)))


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
@pytest.mark.parametrize("count", [8, 64, 1024])
def test_bit_unshuffle_inverts_the_bitshuffle_filter(itemsize, count):
    values = np.random.default_rng(count * itemsize).integers(0, 256, count * itemsize, dtype=np.uint8)
    array = values.view(f"u{itemsize}")

    def fill(file):
        file.create_dataset(
            DATASET, data=array, chunks=array.shape, **hdf5plugin.Bitshuffle(nelems=count, cname="none")
        )

    with h5py.File(io.BytesIO(hdf5_file(fill)), "r") as file:
        shuffled = np.frombuffer(file[DATASET].id.read_direct_chunk((0,))[1], np.uint8)
    assert not np.array_equal(shuffled, values) or count * itemsize < 16
    np.testing.assert_array_equal(bit_unshuffle(shuffled, count, itemsize), values)


def test_lzf_overlapping_back_references_and_long_runs():
    array = np.frombuffer(b"ab" * 3000 + bytes(5000) + bytes(range(256)) * 8 + b"xyz" * 1000, np.uint8)
    array = array[: array.size // 100 * 100].reshape(-1, 100)
    body = hdf5_file(lambda f: f.create_dataset(DATASET, data=array, chunks=array.shape, compression="lzf"))
    with h5py.File(io.BytesIO(body), "r") as file:
        assert file[DATASET].id.get_chunk_info(0).size < array.size // 4  # it really compressed
    np.testing.assert_array_equal(decode_hdf5(memoryview(body), None, DecodeLimits())[0, 0], array)


@pytest.mark.parametrize(
    "options",
    [
        {"scaleoffset": 0},
        dict(hdf5plugin.Blosc2()),
        dict(hdf5plugin.SZ3(absolute=0.1)),
    ],
    ids=["scaleoffset", "blosc2", "sz3"],
)
def test_filters_without_a_bounded_decoder_are_refused_before_reading(options):
    array = np.arange(64, dtype=np.int32).reshape(8, 8)
    body = hdf5_file(lambda f: f.create_dataset(DATASET, data=array, chunks=(8, 8), **options))
    with pytest.raises(BadRequest) as info:
        decode_hdf5(memoryview(body), None, DecodeLimits())
    assert info.value.type == "hdf5_unsupported_filter" and "accepted" in info.value.message


@pytest.mark.parametrize("order", ["deflate_then_shuffle", "two_compressors", "fletcher_first"])
def test_filter_pipelines_out_of_the_usual_order_are_refused(order):
    def fill(file):
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((8, 8))
        if order == "deflate_then_shuffle":
            dcpl.set_deflate(4)
            dcpl.set_shuffle()
        elif order == "two_compressors":
            dcpl.set_deflate(4)
            dcpl.set_filter(hdf5plugin.LZ4_ID, h5py.h5z.FLAG_OPTIONAL, ())
        else:
            dcpl.set_fletcher32()
            dcpl.set_deflate(4)
        space = h5py.h5s.create_simple((8, 8))
        dsid = h5py.h5d.create(file.id, b"data", h5py.h5t.STD_I32LE, space, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.arange(64, dtype=np.int32).reshape(8, 8))

    with pytest.raises(BadRequest) as info:
        decode_hdf5(memoryview(hdf5_file(fill)), "/data", DecodeLimits())
    assert info.value.type == "hdf5_unsupported_filter" and "pipeline" in info.value.message


def test_datatypes_with_odd_precision_are_refused():
    def fill(file):
        odd = h5py.h5t.STD_U16LE.copy()
        odd.set_precision(12)
        space = h5py.h5s.create_simple((4, 4))
        h5py.h5d.create(file.id, b"data", odd, space)

    with pytest.raises(BadRequest) as info:
        decode_hdf5(memoryview(hdf5_file(fill)), "/data", DecodeLimits())
    assert info.value.type == "unsupported_dtype"


@pytest.mark.parametrize("name", ["lz4", "bitshuffle+lz4"])
def test_without_the_lz4_package_its_chunks_are_refused_as_unsupported(name):
    array = np.arange(64, dtype=np.uint16).reshape(8, 8)
    body = hdf5_file(lambda f: f.create_dataset(DATASET, data=array, chunks=(8, 8), **FILTERS[name]))
    script = (
        "import sys\nsys.modules['lz4'] = sys.modules['lz4.block'] = None\n"
        "from peaknet_serve.decode import decode_hdf5, DecodeLimits\nfrom peaknet_serve.errors import RequestError\n"
        "try:\n    decode_hdf5(memoryview(sys.stdin.buffer.read()), None, DecodeLimits())\n"
        "except RequestError as error:\n    print(error.status, error.type)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], input=body, capture_output=True, timeout=60)
    assert result.stdout.split() == [b"400", b"hdf5_unsupported_filter"], result.stderr[-400:]


def test_a_blosc_buffer_with_a_damaged_header_is_400_not_a_reader_fault():
    stored = bytearray(encoded_chunk("blosc", bytes(132), itemsize=2)[1])
    stored[0] = 0x55  # the format version byte
    body = with_chunks((6, 11), "u2", (6, 11), "blosc", {(0, 0): bytes(stored)})
    with pytest.raises(BadRequest) as info:
        decode_hdf5(memoryview(body), None, DecodeLimits())
    assert info.value.type == "bad_hdf5" and "blosc" in info.value.message


def test_a_bitshuffle_header_declaring_a_huge_block_allocates_only_the_chunk():
    data = bytes(range(8))
    stored = bytearray(encoded_chunk("bitshuffle+lz4", data, itemsize=1)[1])
    stored[8:12] = (1 << 29).to_bytes(4, "big")  # 512 MiB blocks for an 8-byte chunk
    body = with_chunks((1, 8), "u1", (1, 8), "bitshuffle+lz4", {(0, 0): bytes(stored)})
    tracemalloc.start()
    try:
        decoded = decode_hdf5(memoryview(body), None, DecodeLimits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert decoded.reshape(-1).tobytes() == data
