"""HDF5 decoding with real files written by h5py, through the in-process reader and the sandbox."""

import io
import time

import h5py
import hdf5plugin
import numpy as np
import pytest

from peaknet_serve.decode.hdf5 import DEFAULT_DATASET, decode_hdf5
from peaknet_serve.decode.hdf5_sandbox import Hdf5Sandbox
from peaknet_serve.decode.limits import DecodeLimits
from peaknet_serve.errors import BadRequest, PayloadTooLarge, RequestError

from .hdf5_hostile import OpenSentinel, declared_bomb, hdf5_file, oversized_chunks, unknown_filter

DTYPES = ["uint8", "uint16", "int16", "int32", "uint32", "float16", "float32", "float64"]


@pytest.fixture(scope="module")
def sandbox():
    with Hdf5Sandbox(timeout_s=30) as box:
        yield box


@pytest.fixture(params=["in_process", "sandbox"])
def read(request, sandbox):
    """Both HDF5 readers must behave identically."""
    return decode_hdf5 if request.param == "in_process" else sandbox.decode


def with_dataset(array, path: str = DEFAULT_DATASET, **kwargs) -> bytes:
    return hdf5_file(lambda file: file.create_dataset(path, data=array, **kwargs))


def frames(seed: int, shape, dtype) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 1000).astype(dtype)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "frames_shape"),
    [((6, 7), (1, 1, 6, 7)), ((3, 6, 7), (3, 1, 6, 7)), ((2, 3, 6, 7), (2, 3, 6, 7))],
)
def test_round_trip_every_dtype_and_layout(read, dtype, shape, frames_shape):
    array = frames(0, shape, dtype)
    decoded = read(memoryview(with_dataset(array)), None, DecodeLimits())
    assert decoded.shape == frames_shape and decoded.dtype == np.dtype(dtype)
    assert decoded.dtype.isnative and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded.reshape(shape), array)


@pytest.mark.parametrize(
    "compression",
    [
        dict(compression="gzip", compression_opts=6),
        dict(compression="gzip", shuffle=True),
        dict(compression="lzf"),
        dict(**hdf5plugin.LZ4()),
        dict(**hdf5plugin.Bitshuffle()),
        dict(**hdf5plugin.Bitshuffle(cname="zstd")),
        dict(**hdf5plugin.Zstd()),
        dict(**hdf5plugin.Blosc()),
        dict(fletcher32=True),
    ],
    ids=["gzip", "shuffle+gzip", "lzf", "lz4", "bitshuffle+lz4", "bitshuffle+zstd", "zstd", "blosc", "fletcher32"],
)
def test_compressed_chunked_datasets_decode(read, compression):
    array = np.random.default_rng(1).poisson(2.0, (4, 2, 64, 48)).astype(np.uint16)  # photon counts
    body = with_dataset(array, chunks=(1, 1, 64, 48), **compression)
    assert len(body) < array.nbytes or "fletcher32" in compression
    np.testing.assert_array_equal(read(memoryview(body), None, DecodeLimits()), array)


def test_big_endian_datasets_arrive_in_native_order(read):
    array = frames(2, (3, 5, 6), ">f4")
    decoded = read(memoryview(with_dataset(array)), None, DecodeLimits())
    assert decoded.dtype == np.float32 and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded[:, 0], array)


def test_nan_and_inf_pass_through(read):
    array = np.array([[np.nan, np.inf], [-np.inf, 2.0]], np.float32)
    np.testing.assert_array_equal(read(memoryview(with_dataset(array)), None, DecodeLimits())[0, 0], array)


def test_named_dataset_and_user_block(read):
    array = frames(3, (2, 8, 8), np.int32)
    body = hdf5_file(lambda f: f.create_dataset("/scan/frames", data=array), userblock_size=512)
    np.testing.assert_array_equal(read(memoryview(body), "/scan/frames", DecodeLimits())[:, 0], array)
    np.testing.assert_array_equal(read(memoryview(body), "scan/frames", DecodeLimits())[:, 0], array)


def test_soft_links_inside_the_file_are_followed(read):
    array = frames(4, (2, 4, 4), np.uint16)

    def fill(file):
        file.create_dataset("/raw/data", data=array)
        file["/entry_1/data_1/data"] = h5py.SoftLink("/raw/data")  # absolute
        file["/entry_1/alias"] = h5py.SoftLink("data_1")  # relative, to a group
        file["/hop"] = h5py.SoftLink("/entry_1/alias/data")  # a chain through both

    body = hdf5_file(fill)
    for path in (None, "/entry_1/alias/data", "/hop"):
        np.testing.assert_array_equal(read(memoryview(body), path, DecodeLimits())[:, 0], array)


# --- hostile files: nothing outside the request is ever opened -----------------------------


def test_the_sentinel_detects_an_open(tmp_path):
    """Positive control: plain h5py reading external storage does open the sentinel."""
    sentinel = OpenSentinel(tmp_path / "raw.bin")
    body = hdf5_file(lambda f: f.create_dataset("d", shape=(4, 4), dtype="u1", external=[(sentinel.path, 0, 16)]))
    with h5py.File(io.BytesIO(body), "r") as file, pytest.raises(OSError):
        file["d"][...]
    assert sentinel.was_opened()


@pytest.mark.parametrize("where", ["dataset", "group", "via_soft_link"])
def test_external_links_are_refused_unopened(read, tmp_path, where):
    sentinel = OpenSentinel(tmp_path / "other.h5")

    def fill(file):
        if where == "dataset":
            file["/entry_1/data_1/data"] = h5py.ExternalLink(sentinel.path, "/entry_1/data_1/data")
        elif where == "group":
            file["/entry_1"] = h5py.ExternalLink(sentinel.path, "/entry_1")
        else:
            file["/outside"] = h5py.ExternalLink(sentinel.path, "/data")
            file["/entry_1/data_1/data"] = h5py.SoftLink("/outside")

    with pytest.raises(BadRequest) as info:
        read(memoryview(hdf5_file(fill)), None, DecodeLimits())
    assert info.value.type == "hdf5_external_link"
    assert not sentinel.was_opened()


def test_external_raw_storage_is_refused_unopened(read, tmp_path):
    sentinel = OpenSentinel(tmp_path / "pixels.bin")
    body = with_dataset(None, shape=(2, 4, 4), dtype="u2", external=[(sentinel.path, 0, 64)])
    with pytest.raises(BadRequest) as info:
        read(memoryview(body), None, DecodeLimits())
    assert info.value.type == "hdf5_external_storage"
    assert not sentinel.was_opened()


@pytest.mark.parametrize("unlimited", [False, True])
def test_virtual_datasets_are_refused_unopened(read, tmp_path, unlimited):
    sentinel = OpenSentinel(tmp_path / "source.h5")
    layout = h5py.VirtualLayout(shape=(2, 4, 4), dtype="u2", maxshape=(None, 4, 4) if unlimited else None)
    source = h5py.VirtualSource(sentinel.path, "data", shape=(2, 4, 4), maxshape=(None, 4, 4) if unlimited else None)
    layout[:] = source
    body = hdf5_file(lambda f: f.create_virtual_dataset(DEFAULT_DATASET, layout, fillvalue=0))
    with pytest.raises(BadRequest) as info:
        read(memoryview(body), None, DecodeLimits())
    assert info.value.type == "hdf5_virtual_dataset"
    assert not sentinel.was_opened()


def test_filters_that_are_not_installed_are_refused(read):
    with pytest.raises(BadRequest) as info:
        read(memoryview(unknown_filter(31999)), None, DecodeLimits())
    assert info.value.type == "hdf5_unsupported_filter" and "31999" in info.value.message


# --- sizes: checked before anything is allocated or decompressed --------------------------


def test_decompression_bomb_is_413_before_reading(read):
    body = declared_bomb()
    assert len(body) < 100_000
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge) as info:
        read(memoryview(body), None, DecodeLimits())
    assert info.value.type == "too_large"
    assert time.monotonic() - started < 5


def test_a_chunk_larger_than_the_pixel_budget_is_413(read):
    with pytest.raises(PayloadTooLarge) as info:
        read(memoryview(oversized_chunks(8192)), None, DecodeLimits())
    assert "chunks" in info.value.message


def test_a_stack_of_too_many_frames_is_413(read):
    body = with_dataset(np.zeros((65, 4, 4), np.uint8))
    with pytest.raises(PayloadTooLarge, match="65 frames"):
        read(memoryview(body), None, DecodeLimits())


# --- malformed or unsupported content ---------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda f: f.create_dataset(DEFAULT_DATASET, data=np.array([["a", "b"], ["c", "d"]], dtype="S1")),
        lambda f: f.create_dataset(DEFAULT_DATASET, data=np.zeros((2, 2), [("a", "u2"), ("b", "f4")])),
        lambda f: f.create_dataset(DEFAULT_DATASET, data=np.zeros((2, 2), bool)),
        lambda f: f.create_dataset(DEFAULT_DATASET, data=np.zeros((2, 2), np.int64)),
        lambda f: f.create_dataset(DEFAULT_DATASET, data=np.zeros((2, 2), np.int8)),
        lambda f: f.create_dataset(DEFAULT_DATASET, data=np.zeros((2, 2), np.complex64)),
        lambda f: f.create_dataset(DEFAULT_DATASET, shape=(2, 2), dtype=h5py.enum_dtype({"a": 0, "b": 1}, "u1")),
        lambda f: f.create_dataset(DEFAULT_DATASET, shape=(2, 2), dtype=h5py.string_dtype()),
    ],
    ids=["bytes", "compound", "bool", "int64", "int8", "complex", "enum", "vlen-string"],
)
def test_non_numeric_or_unsupported_dtypes_are_refused(read, make):
    with pytest.raises(BadRequest) as info:
        read(memoryview(hdf5_file(make)), None, DecodeLimits())
    assert info.value.type == "unsupported_dtype" and "uint16" in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        np.uint16(3),
        np.arange(5, dtype=np.uint16),
        np.zeros((1, 1, 1, 2, 2), np.uint16),
        np.zeros((0, 4), np.uint16),
        h5py.Empty("u2"),
    ],
    ids=["scalar", "1d", "5d", "zero-size", "null-dataspace"],
)
def test_unreadable_shapes_are_bad_shape(read, data):
    with pytest.raises(BadRequest) as info:
        read(memoryview(with_dataset(data)), None, DecodeLimits())
    assert info.value.type == "bad_shape"


@pytest.mark.parametrize("path", ["/missing", "/entry_1", "/entry_1/data_1/data/deeper", "/entry_1/data_1/nope"])
def test_missing_or_non_dataset_paths_are_not_found(read, path):
    body = with_dataset(np.zeros((2, 2), np.uint16))
    with pytest.raises(BadRequest) as info:
        read(memoryview(body), path, DecodeLimits())
    assert info.value.type == "hdf5_dataset_not_found" and "X-Dataset" in info.value.message


def test_default_dataset_missing_names_the_default(read):
    body = hdf5_file(lambda f: f.create_dataset("/other", data=np.zeros((2, 2), np.uint16)))
    with pytest.raises(BadRequest, match="/entry_1/data_1/data"):
        read(memoryview(body), None, DecodeLimits())


@pytest.mark.parametrize("path", ["", "/", "//", "/./"])
def test_empty_dataset_path_is_a_bad_option(read, path):
    with pytest.raises(BadRequest) as info:
        read(memoryview(with_dataset(np.zeros((2, 2), np.uint8))), path, DecodeLimits())
    assert info.value.type == "bad_option"


def test_soft_link_loops_and_dangling_links_are_400(read):
    def fill(file):
        file["/a"] = h5py.SoftLink("/b")
        file["/b"] = h5py.SoftLink("/a")
        file["/dangling"] = h5py.SoftLink("/nowhere")

    body = hdf5_file(fill)
    with pytest.raises(BadRequest, match="loop"):
        read(memoryview(body), "/a", DecodeLimits())
    with pytest.raises(BadRequest) as info:
        read(memoryview(body), "/dangling", DecodeLimits())
    assert info.value.type == "hdf5_dataset_not_found"


@pytest.mark.parametrize("cut", [8, 100, 600, -200, -1])
def test_truncated_files_are_bad_hdf5(read, cut):
    body = with_dataset(frames(5, (2, 16, 16), np.uint16), chunks=(1, 16, 16), compression="gzip")
    with pytest.raises(RequestError) as info:
        read(memoryview(body[:cut]), None, DecodeLimits())
    assert info.value.status == 400 and info.value.type in {"bad_hdf5", "hdf5_dataset_not_found"}


def test_garbage_after_the_signature_is_bad_hdf5(read):
    with pytest.raises(BadRequest) as info:
        read(memoryview(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4), None, DecodeLimits())
    assert info.value.type == "bad_hdf5"
