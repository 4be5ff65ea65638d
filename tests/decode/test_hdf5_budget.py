"""Hostile HDF5 files against the decoding budget: bombs of every filter, chunk-index bombs, short
chunks, link chains, virtual and external data; memory measured in the reader process itself."""

from __future__ import annotations

import io
import json
import os
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from backports import zstd

from peaknet_serve.decode.hdf5 import MAX_PATH_STEPS, MAX_SOFT_LINK_HOPS, decode_hdf5
from peaknet_serve.decode.hdf5_budget import CHUNK_SLACK_BYTES, max_stored_bytes
from peaknet_serve.decode.hdf5_sandbox import Hdf5Sandbox
from peaknet_serve.decode.limits import DecodeLimits
from peaknet_serve.errors import BadRequest, RequestError

from .hdf5_hostile import (
    DATASET,
    FILTERS,
    MiB,
    bomb,
    chunk_index_bomb,
    encoded,
    hdf5_file,
    oversized_chunks,
    with_chunks,
)

SIXTY_FOUR_FRAMES = DecodeLimits(max_frames=64, max_pixels=64 * 16 * 352 * 384, max_body_bytes=1 << 30)
"""Limits that admit 64 frames (the shipped defaults admit 16)."""

MEMORY_MARGIN = 16 * MiB
"""The fixed margin of the bound: reader growth <= body + 2 x decoded frames + this."""

MEASURED: list[dict] = []
"""Every memory measurement of this module; written to $PEAKNET_HDF5_MEMORY_REPORT when set."""


@pytest.fixture(scope="module")
def sandbox():
    with Hdf5Sandbox(timeout_s=60) as box:
        yield box
    path = os.environ.get("PEAKNET_HDF5_MEMORY_REPORT")
    if path:
        Path(path).write_text(json.dumps({"margin_bytes": MEMORY_MARGIN, "cases": MEASURED}, indent=1) + "\n")


@pytest.fixture(params=["in_process", "sandbox"])
def read(request, sandbox):
    return decode_hdf5 if request.param == "in_process" else sandbox.decode


def growth(sandbox: Hdf5Sandbox) -> int:
    """How far the reader's RSS rose above its level when the last request arrived."""
    memory = sandbox.last_memory
    return memory["peak_rss_bytes"] - memory["baseline_rss_bytes"]


def assert_within_bound(sandbox: Hdf5Sandbox, body: bytes, decoded_bytes: int, case: str) -> None:
    assert sandbox.last_memory["peak_rss_bytes"] > 0, "VmHWM not readable here"
    bound = len(body) + 2 * decoded_bytes + MEMORY_MARGIN
    MEASURED.append(
        {
            "case": case,
            "body_bytes": len(body),
            "decoded_bytes": decoded_bytes,
            "growth_bytes": growth(sandbox),
            "bound_bytes": bound,
        }
    )
    assert growth(sandbox) <= bound, sandbox.last_memory


def refused(reader, body: bytes, limits: DecodeLimits = DecodeLimits()) -> RequestError:
    with pytest.raises(RequestError) as info:
        reader(memoryview(body), None, limits)
    assert info.value.status in (400, 413)
    return info.value


# --- decompression bombs: refused before or while decoding, memory bounded -------------------

BOMBS = {  # filter -> inflated size of one 128 KiB chunk's stored bytes
    "gzip": 128 * MiB,
    "bzip2": 64 * MiB,
    "zstd": 512 * MiB,
    "lz4": 512 * MiB,
    "bitshuffle+lz4": 512 * MiB,
    "blosc": 64 * MiB,
}


@pytest.fixture(scope="module")
def bombs():
    return {name: bomb(name, size) for name, size in BOMBS.items()}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_bomb_of_every_filter_is_400_with_bounded_memory(sandbox, bombs, name):
    body = bombs[name]
    assert len(body) < 3 * MiB  # a few KB to ~2 MB on the wire
    started = time.monotonic()
    error = refused(sandbox.decode, body)
    assert time.monotonic() - started < 5
    assert error.type == "bad_hdf5" and "(0, 0, 0)" in error.message
    assert_within_bound(sandbox, body, 256 * 256 * 2, f"{name} bomb, {BOMBS[name] >> 20} MiB")
    assert growth(sandbox) < 8 * MiB  # nowhere near the bomb's size
    assert sandbox.restarts == 0


@pytest.mark.parametrize("name", ["gzip", "bzip2", "zstd"])
def test_stream_bombs_small_enough_to_pass_the_stored_size_check_stop_one_byte_past_the_chunk(bombs, name):
    body = bombs[name]
    with h5py.File(io.BytesIO(body), "r") as file:
        assert file[DATASET].id.get_chunk_info(0).size <= max_stored_bytes(256 * 256 * 2)
    error = refused(decode_hdf5, body)
    assert "more than its declared 131072 bytes" in error.message


def test_a_zstd_frame_asking_for_a_window_larger_than_its_chunk_is_400(read):
    compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 27})
    stored = compressor.compress(bytes(256 * 256 * 2)) + compressor.flush()  # exactly the chunk's size
    body = with_chunks((1, 256, 256), "u2", (1, 256, 256), "zstd", {(0, 0, 0): stored})
    assert "too much memory" in refused(read, body).message


def test_a_bomb_larger_than_any_encoding_of_its_chunk_is_refused_before_decoding(read):
    body = bomb("gzip", 256 * MiB)  # 260 KB stored for a 128 KiB chunk
    error = refused(read, body)
    assert "more than any encoding" in error.message


def test_a_chunk_declared_larger_than_the_frames_is_413(read):
    error = refused(read, oversized_chunks(4096))
    assert error.status == 413 and "chunks" in error.message and 4096 * 4096 > 64 + CHUNK_SLACK_BYTES


# --- chunk-index bombs -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 352, 384), (16, 352, 384), (1, 16, 352, 384)])
def test_chunk_index_bombs_are_413_at_once(sandbox, read, shape):
    body = chunk_index_bomb(shape)
    assert len(body) < 8192
    started = time.monotonic()
    error = refused(read, body)
    assert time.monotonic() - started < 1
    assert error.status == 413 and "chunks per frame" in error.message
    if read == sandbox.decode:
        assert_within_bound(sandbox, body, 0, f"chunk-index bomb {shape}")
        assert growth(sandbox) < 8 * MiB


def test_the_chunk_limit_scales_with_the_frames(read):
    # (4, 352, 384) in (1, 16, 16) chunks: 528 chunks per frame, of 512 bytes: decoded at the default limits
    array = np.random.default_rng(2).integers(0, 99, (4, 352, 384), dtype=np.uint16)
    body = hdf5_file(lambda f: f.create_dataset(DATASET, data=array, chunks=(1, 16, 16), compression="gzip"))
    np.testing.assert_array_equal(read(memoryview(body), None, DecodeLimits())[:, 0], array)
    error = refused(read, body, DecodeLimits(max_chunks_per_frame=527))
    assert error.status == 413 and "527 chunks per frame" in error.message


def test_tiny_chunks_are_413_even_within_the_chunks_per_frame(sandbox, read):
    # (64, 32, 32) in 1-element chunks: 1024 per frame, but 2 bytes each
    array = np.random.default_rng(3).integers(0, 3, (64, 32, 32), dtype=np.uint16)
    body = hdf5_file(lambda f: f.create_dataset(DATASET, data=array, chunks=(1, 1, 1), compression="gzip"))
    started = time.monotonic()
    error = refused(read, body, SIXTY_FOUR_FRAMES)
    assert time.monotonic() - started < 1
    assert error.status == 413 and "512 bytes on average" in error.message
    if read == sandbox.decode:
        assert_within_bound(sandbox, body, array.nbytes, "65,536 allocated 2-byte chunks")


def test_chunks_that_overlap_or_repeat_cannot_multiply_the_work(read):
    """Every chunk of a 64-frame grid points at the same stored bytes: bounded by the work limit."""
    chunk = zlib.compress(bytes(4096))
    payloads = {(n, 0, 0): chunk for n in range(64)}
    body = with_chunks((64, 32, 64), "u2", (1, 32, 64), "gzip", payloads)
    assert read(memoryview(body), None, DecodeLimits(max_frames=64)).shape == (64, 1, 32, 64)  # tiles the frames: fine


# --- short, long and corrupt chunks: 400, never stale bytes ----------------------------------


def test_the_gzip_chunk_holding_8_of_its_131072_bytes_is_400(read):
    body = with_chunks((1, 256, 256), "u2", (1, 256, 256), "gzip", {(0, 0, 0): zlib.compress(bytes(range(8)))})
    error = refused(read, body)
    assert error.type == "bad_hdf5" and "decodes to 8 bytes" in error.message and "131072" in error.message


def test_a_16_byte_bitshuffle_chunk_is_400(read):
    header = (256 * 256 * 2).to_bytes(8, "big") + (8192).to_bytes(4, "big")
    body = with_chunks((1, 256, 256), "u2", (1, 256, 256), "bitshuffle+lz4", {(0, 0, 0): header + b"\x00\x00\x00\x09"})
    error = refused(read, body)
    assert error.type == "bad_hdf5" and "(0, 0, 0)" in error.message


SHORT_CASES = [
    "gzip",
    "shuffle+gzip",
    "bzip2",
    "zstd",
    "lz4",
    "bitshuffle+lz4",
    "bitshuffle+zstd",
    "bitshuffle",
    "blosc",
    "lzf",
    "fletcher32",
]


@pytest.mark.parametrize("name", SHORT_CASES)
@pytest.mark.parametrize("damage", ["shorter_data", "longer_data", "cut", "trailing"])
def test_chunks_that_do_not_decode_to_exactly_their_size_are_400(read, name, damage):
    chunk = (1, 64, 64)
    data = np.random.default_rng(7).integers(0, 50, chunk, dtype=np.uint16).tobytes()
    if damage == "shorter_data":
        stored = encoded(name, data[:-64])
    elif damage == "longer_data":
        stored = encoded(name, data + data[:64])
    elif damage == "cut":
        stored = encoded(name, data)[:-7]
    else:
        stored = encoded(name, data) + b"\x01\x02\x03"
    body = with_chunks(chunk, "u2", chunk, name, {(0, 0, 0): stored})
    error = refused(read, body)
    assert error.type == "bad_hdf5"


def test_unallocated_chunks_hold_the_fill_value_even_after_other_requests(sandbox):
    noisy = np.random.default_rng(3).integers(1, 60000, (4, 64, 64), dtype=np.uint16)
    noisy_body = hdf5_file(lambda f: f.create_dataset(DATASET, data=noisy, chunks=(1, 64, 64), compression="gzip"))
    first = np.full((64, 64), 7, np.uint16)
    sparse = with_chunks((4, 64, 64), "u2", (1, 64, 64), "gzip", {(0, 0, 0): zlib.compress(first.tobytes())})
    for _ in range(3):
        np.testing.assert_array_equal(sandbox.decode(memoryview(noisy_body), None, DecodeLimits())[:, 0], noisy)
        decoded = sandbox.decode(memoryview(sparse), None, DecodeLimits())[:, 0]
        np.testing.assert_array_equal(decoded[0], first)
        assert not decoded[1:].any()


def test_a_user_fill_value_fills_unallocated_chunks_and_contiguous_data(read):
    sparse = with_chunks(
        (3, 4, 4),
        "f4",
        (1, 4, 4),
        "gzip",
        {(1, 0, 0): zlib.compress(np.ones(16, "f4").tobytes())},
        fillvalue=np.float32(-2.5),
    )
    decoded = read(memoryview(sparse), None, DecodeLimits())[:, 0]
    assert (decoded[0] == -2.5).all() and (decoded[1] == 1).all() and (decoded[2] == -2.5).all()
    never_written = hdf5_file(lambda f: f.create_dataset(DATASET, shape=(2, 4, 4), dtype="i2", fillvalue=-9))
    assert (read(memoryview(never_written), None, DecodeLimits()) == -9).all()


def test_a_chunk_whose_compressor_was_skipped_is_read_raw(read):
    array = np.arange(64, dtype=np.uint16).reshape(1, 8, 8)
    body = with_chunks((1, 8, 8), "u2", (1, 8, 8), "gzip", {(0, 0, 0): array.tobytes()}, filter_mask=1)
    np.testing.assert_array_equal(read(memoryview(body), None, DecodeLimits())[:, 0], array)
    short = with_chunks((1, 8, 8), "u2", (1, 8, 8), "gzip", {(0, 0, 0): array.tobytes()[:-2]}, filter_mask=1)
    assert "holds 126 bytes" in refused(read, short).message


@pytest.mark.parametrize("name", ["shuffle+gzip", "bitshuffle+lz4", "zstd", "blosc", "lzf"])
def test_big_endian_chunked_data_arrives_native_and_exact(read, name):
    array = np.random.default_rng(4).integers(0, 70000, (3, 2, 24, 40)).astype(">i4")
    body = hdf5_file(lambda f: f.create_dataset(DATASET, data=array, chunks=(1, 1, 24, 40), **FILTERS[name]))
    decoded = read(memoryview(body), None, DecodeLimits())
    assert decoded.dtype == np.int32 and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, array)


def test_edge_chunks_overhanging_the_dataset_are_cropped(read):
    array = np.random.default_rng(5).integers(0, 1000, (3, 37, 53), dtype=np.uint16)
    body = hdf5_file(
        lambda f: f.create_dataset(DATASET, data=array, chunks=(2, 16, 16), compression="gzip", shuffle=True)
    )
    np.testing.assert_array_equal(read(memoryview(body), None, DecodeLimits())[:, 0], array)


def test_compact_datasets_decode(read):
    array = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)

    def fill(file):
        space = h5py.h5s.create_simple(array.shape)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        lcpl = file._lcpl  # noqa: SLF001 - h5py's link creation list: makes the intermediate groups
        dsid = h5py.h5d.create(file.id, DATASET.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=dcpl, lcpl=lcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, array)

    np.testing.assert_array_equal(read(memoryview(hdf5_file(fill)), None, DecodeLimits())[:, 0], array)


@pytest.mark.parametrize("limit", ["max_decoded_bytes", "max_pixels"])
def test_decoded_bytes_are_checked_on_the_declared_shape(read, limit):
    body = hdf5_file(
        lambda f: f.create_dataset(DATASET, shape=(4, 64, 64), dtype="f8", chunks=(1, 64, 64), compression="gzip")
    )
    value = 4 * 64 * 64 * 8 - 1 if limit == "max_decoded_bytes" else 4 * 64 * 64 - 1
    assert refused(read, body, DecodeLimits(**{limit: value})).status == 413


# --- links, virtual and external data ------------------------------------------------------


def test_a_soft_link_chain_of_the_allowed_length_is_followed_and_one_more_is_400(read):
    array = np.arange(16, dtype=np.uint16).reshape(4, 4)

    def chain(hops):
        def fill(file):
            file.create_dataset("/real", data=array)
            file["/hop0"] = h5py.SoftLink("/real")
            for index in range(1, hops):
                file[f"/hop{index}"] = h5py.SoftLink(f"/hop{index - 1}")

        return hdf5_file(fill)

    np.testing.assert_array_equal(
        read(memoryview(chain(MAX_SOFT_LINK_HOPS)), f"/hop{MAX_SOFT_LINK_HOPS - 1}", DecodeLimits())[0, 0], array
    )
    with pytest.raises(BadRequest, match="chain"):
        read(memoryview(chain(MAX_SOFT_LINK_HOPS + 1)), f"/hop{MAX_SOFT_LINK_HOPS}", DecodeLimits())


def test_long_link_paths_and_huge_link_targets_are_400_at_once(read):
    def fill(file):
        group = file.create_group("/g")
        group["g"] = group  # a hard link cycle: /g/g/g/... is a valid path of any length
        file["/deep"] = h5py.SoftLink("/" + "g/" * 200_000 + "data")  # a 400 kB link target
        file["/steps"] = h5py.SoftLink("/g" * (MAX_PATH_STEPS + 1))

    body = hdf5_file(fill)
    for path in ("/deep", "/steps", "/g" * (MAX_PATH_STEPS + 1)):
        started = time.monotonic()
        with pytest.raises(BadRequest) as info:
            read(memoryview(body), path, DecodeLimits())
        assert time.monotonic() - started < 1
        assert info.value.type == "bad_hdf5"


@pytest.fixture
def server_file(tmp_path):
    """A real HDF5 file on the server's disk holding a secret the requests must never see."""
    path = tmp_path / "server.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("data", data=np.full((2, 4, 4), 4242, np.uint16))
        file.create_dataset(DATASET, data=np.full((2, 4, 4), 4242, np.uint16))
    return path


@pytest.mark.parametrize("unlimited", [False, True])
def test_a_virtual_dataset_pointing_at_a_real_server_file_is_refused(read, server_file, unlimited, tmp_path):
    maxshape = (None, 4, 4) if unlimited else None
    layout = h5py.VirtualLayout(shape=(2, 4, 4), dtype="u2", maxshape=maxshape)
    layout[:] = h5py.VirtualSource(str(server_file), "data", shape=(2, 4, 4), maxshape=maxshape)
    body = hdf5_file(lambda f: f.create_virtual_dataset(DATASET, layout, fillvalue=0))
    (tmp_path / "request.h5").write_bytes(body)
    with h5py.File(tmp_path / "request.h5", "r") as file:  # positive control: plain h5py reads the secret
        assert (file[DATASET][...] == 4242).all()
    assert refused(read, body).type == "hdf5_virtual_dataset"


def test_external_links_and_storage_pointing_at_a_real_server_file_are_refused(read, server_file):
    link = hdf5_file(lambda f: f.__setitem__(DATASET, h5py.ExternalLink(str(server_file), DATASET)))
    assert refused(read, link).type == "hdf5_external_link"
    storage = hdf5_file(
        lambda f: f.create_dataset(DATASET, shape=(2, 4, 4), dtype="u2", external=[(str(server_file), 0, 64)])
    )
    assert refused(read, storage).type == "hdf5_external_storage"


# --- determinism and memory on valid input --------------------------------------------------


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_valid_files_of_every_filter_decode_exactly_within_the_memory_bound(sandbox, name):
    array = np.random.default_rng(6).poisson(3.0, (2, 16, 352, 384)).astype(np.uint16)
    body = hdf5_file(lambda f: f.create_dataset(DATASET, data=array, chunks=(1, 4, 352, 384), **FILTERS[name]))
    decoded = sandbox.decode(memoryview(body), None, DecodeLimits())
    np.testing.assert_array_equal(decoded, array)
    assert_within_bound(sandbox, body, array.nbytes, f"valid {name}, {array.shape} uint16")


def test_one_chunk_holding_all_frames_stays_within_the_memory_bound(sandbox):
    array = np.random.default_rng(8).poisson(3.0, (1, 16, 352, 384)).astype(np.uint16)
    body = hdf5_file(
        lambda f: f.create_dataset(DATASET, data=array, chunks=array.shape, compression="gzip", shuffle=True)
    )
    np.testing.assert_array_equal(sandbox.decode(memoryview(body), None, DecodeLimits()), array)
    assert_within_bound(sandbox, body, array.nbytes, "valid shuffle+gzip, one chunk of (1, 16, 352, 384)")
    assert sandbox.last_memory["budget_bytes"] <= 2 * array.nbytes + 2 * MiB


def test_identical_bytes_give_bit_identical_answers_across_repeats_and_other_requests(sandbox):
    rng = np.random.default_rng(9)
    bodies = [
        hdf5_file(
            lambda f, n=n: f.create_dataset(
                DATASET, data=rng.normal(size=(2, 3, 40, 48)).astype(np.float32), chunks=(1, 1, 40, 48), **FILTERS[n]
            )
        )
        for n in ("bitshuffle+lz4", "shuffle+gzip", "zstd")
    ]
    answers: dict[int, list[bytes]] = {i: [] for i in range(len(bodies))}
    for round_ in range(3):
        for index in range(len(bodies)) if round_ % 2 == 0 else reversed(range(len(bodies))):
            answers[index].append(sandbox.decode(memoryview(bodies[index]), None, DecodeLimits()).tobytes())
            answers[index].append(decode_hdf5(memoryview(bodies[index]), None, DecodeLimits()).tobytes())
    for runs in answers.values():
        assert len(set(runs)) == 1


def test_lzf_datasets_beyond_what_its_slow_decoder_may_take_are_413(read):
    from peaknet_serve.decode.hdf5_filters import LZF_MAX_DECODED_BYTES

    frames = LZF_MAX_DECODED_BYTES // (16 * 352 * 384 * 2) + 1  # ePix10k2M frames, never written: a small file
    body = hdf5_file(
        lambda f: f.create_dataset(
            DATASET, shape=(frames, 16, 352, 384), dtype="u2", chunks=(1, 1, 352, 384), compression="lzf"
        )
    )
    error = refused(read, body)
    assert error.status == 413 and "LZF" in error.message


def test_the_most_chunks_the_limits_allow_stay_within_the_memory_bound(sandbox):
    """(64, 352, 384) in (1, 16, 16) chunks: 33,792 chunks of 512 bytes, the average-size limit exactly."""
    array = np.random.default_rng(10).integers(0, 3, (64, 352, 384), dtype=np.uint16)
    body = hdf5_file(lambda f: f.create_dataset(DATASET, data=array, chunks=(1, 16, 16), compression="gzip"))
    np.testing.assert_array_equal(sandbox.decode(memoryview(body), None, SIXTY_FOUR_FRAMES)[:, 0], array)
    assert_within_bound(sandbox, body, array.nbytes, "33,792 allocated 512-byte chunks, (64, 352, 384)")
