"""Property-based fuzzing of every decoder: only RequestError may escape, valid input round-trips.

Hypothesis drives random bodies, mutated valid payloads (the seed corpus included), random
headers and random ``.npy`` headers through :func:`peaknet_serve.decode.decode_request`. HDF5 goes
through the sandbox, exactly as in the server, so a file that crashes the HDF5 stack shows up as
a 400 and a sandbox restart rather than as a dead test process.

The chunk and filter layer is fuzzed directly: well-formed HDF5 files whose chunks hold random
or mutated bytes for every supported filter (written with ``write_direct_chunk``), each decoded
twice; the answers must be frames or a 4xx, the same both times, and the reader must never
crash (the session ends by checking that the sandbox was never restarted).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fuzz_payloads import FUZZ_STATS, HDF5_COMPRESSIONS, examples, hdf5_bytes, npy_bytes, run_counted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from peaknet_serve.decode import DecodedFrames, DecodeLimits, decode_request
from peaknet_serve.decode.npy import read_npy_header
from peaknet_serve.decode.options import normalise_options
from peaknet_serve.errors import RequestError
from tests.decode.hdf5_hostile import FILTERS, encoded_chunk, with_chunks

CORPUS = Path(__file__).resolve().parent / "corpus"
SEEDS = [(CORPUS / entry["file"]).read_bytes() for entry in json.loads((CORPUS / "manifest.json").read_text())]
DTYPES = ["uint8", "uint16", "int16", "int32", "uint32", "float16", "float32", "float64"]
CONTENT_TYPES = [
    None,
    "",
    "application/octet-stream",
    "application/x-npy",
    "application/npy",
    "application/x-hdf5",
    "application/x-cxi",
    "application/x-hdf",
    "multipart/form-data",
    "text/plain",
    "application/json",
    "application/x-hdf5; charset=utf-8",
    "\x00;;",
    "a" * 300,
]
SMALL_LIMITS = DecodeLimits(
    max_body_bytes=1 << 20, max_pixels=1 << 16, max_frames=8, max_panels_per_frame=8, max_side=512
)


def fuzz_settings(count: int):
    return settings(
        max_examples=examples(count),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def check_decoded(outcome) -> None:
    """A decode that succeeded honours the contract and the limits."""
    if isinstance(outcome, RequestError):
        return
    assert isinstance(outcome, DecodedFrames)
    array = outcome.array
    assert array.ndim == 4 and all(d > 0 for d in array.shape)
    assert array.dtype.isnative and array.flags.c_contiguous
    assert outcome.dtype_name in DTYPES and outcome.encoding in {"raw", "npy", "hdf5"}
    assert array.size <= SMALL_LIMITS.max_pixels


def mutate(data: st.DataObject, body: bytes) -> bytes:
    """``body`` with random byte flips, an optional cut and an optional inserted run of bytes."""
    mutable = bytearray(body)
    for _ in range(data.draw(st.integers(0, 8), label="flips")):
        if mutable:
            mutable[data.draw(st.integers(0, len(mutable) - 1))] = data.draw(st.integers(0, 255))
    if mutable and data.draw(st.booleans(), label="cut"):
        del mutable[data.draw(st.integers(0, len(mutable) - 1)) :]
    if data.draw(st.booleans(), label="insert"):
        at = data.draw(st.integers(0, len(mutable)))
        mutable[at:at] = data.draw(st.binary(max_size=64))
    return bytes(mutable)


option_values = st.one_of(
    st.sampled_from(DTYPES + ["int64", "", "UINT16", "float", "<u2"]),
    st.lists(st.integers(-2, 70000), max_size=6).map(lambda dims: ",".join(map(str, dims))),
    st.text(max_size=40),
    st.binary(max_size=40),
)
options_strategy = st.dictionaries(
    st.sampled_from(["X-Dtype", "x-shape", "X-Dataset", "dtype", "shape", "dataset", "Content-Type", "other"]),
    option_values,
    max_size=5,
)


@fuzz_settings(1000)
@given(body=st.binary(max_size=4096), content_type=st.sampled_from(CONTENT_TYPES), options=options_strategy)
def test_random_requests_raise_only_request_errors(sandbox, body, content_type, options):
    outcome = run_counted(
        "random_request", lambda: decode_request(body, content_type, options, SMALL_LIMITS, hdf5_reader=sandbox.decode)
    )
    check_decoded(outcome)


@fuzz_settings(400)
@given(
    options=st.dictionaries(
        st.one_of(st.text(max_size=12), st.sampled_from(["X-Shape", "DTYPE"])),
        st.one_of(option_values, st.integers(), st.none()),
        max_size=6,
    )
)
def test_random_options_raise_only_request_errors(options):
    run_counted("options", lambda: normalise_options(options))


@fuzz_settings(300)
@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(1, 9), min_size=2, max_size=4), data=st.data())
def test_raw_round_trip_is_exact(dtype, shape, data):
    array = data.draw(hnp.arrays(dtype, tuple(shape)))
    body = array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    options = {"X-Dtype": dtype, "X-Shape": ",".join(map(str, shape))}
    outcome = run_counted("raw_round_trip", lambda: decode_request(body, "application/octet-stream", options))
    assert isinstance(outcome, DecodedFrames)
    np.testing.assert_array_equal(outcome.array.reshape(shape), array)
    assert np.shares_memory(outcome.array, np.frombuffer(body, np.uint8))


@fuzz_settings(300)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    fortran=st.booleans(),
    version=st.sampled_from([(1, 0), (2, 0), (3, 0)]),
    data=st.data(),
)
def test_npy_round_trip_is_exact(dtype, shape, fortran, version, data):
    array = data.draw(hnp.arrays(dtype, tuple(shape)))
    array = np.asfortranarray(array) if fortran else array
    body = npy_bytes(array, version=version)
    content_type = data.draw(st.sampled_from([None, "application/x-npy", "application/npy"]))
    outcome = run_counted("npy_round_trip", lambda: decode_request(body, content_type, {}))
    assert isinstance(outcome, DecodedFrames)
    np.testing.assert_array_equal(outcome.array.reshape(shape), array)


@fuzz_settings(600)
@given(dtype=st.sampled_from(DTYPES + ["i8", ">u2", "O", "U2"]), data=st.data())
def test_mutated_npy_raises_only_request_errors(dtype, data):
    array = np.zeros(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=5)), dtype=dtype)
    body = mutate(data, npy_bytes(array, allow_pickle=dtype == "O"))
    outcome = run_counted("npy_mutated", lambda: decode_request(body, "application/x-npy", {}, SMALL_LIMITS))
    check_decoded(outcome)


header_fragments = st.sampled_from(
    [
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        ",",
        ":",
        " ",
        "'descr'",
        "'fortran_order'",
        "'shape'",
        "'<u2'",
        "'|u1'",
        "'>f8'",
        "'O'",
        "True",
        "False",
        "None",
        "0",
        "1",
        "-1",
        "99999999999",
        "1e308",
        "b'x'",
        "\\x00",
        "__import__('os')",
        "lambda: 0",
        "[('a', '<u2')]",
        "'\\u1234'",
    ]
)


@fuzz_settings(400)
@given(
    header=st.one_of(st.lists(header_fragments, max_size=30).map("".join), st.text(max_size=200)),
    version=st.sampled_from([1, 2, 3]),
    data_bytes=st.binary(max_size=64),
)
def test_random_npy_headers_raise_only_request_errors(header, version, data_bytes):
    text = header.encode("utf-8")
    width = 2 if version == 1 else 4
    body = b"\x93NUMPY" + bytes([version, 0]) + len(text).to_bytes(width, "little") + text + data_bytes
    outcome = run_counted("npy_header", lambda: read_npy_header(memoryview(body)))
    if not isinstance(outcome, RequestError):
        assert outcome.dtype.name in DTYPES and outcome.dtype.isnative


@fuzz_settings(100)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    compression=st.sampled_from(sorted(HDF5_COMPRESSIONS)),
    data=st.data(),
)
def test_hdf5_round_trip_is_exact(sandbox, dtype, shape, compression, data):
    array = data.draw(hnp.arrays(dtype, tuple(shape)))
    body = hdf5_bytes(array, compression)
    outcome = run_counted(
        "hdf5_round_trip", lambda: decode_request(body, "application/x-hdf5", {}, hdf5_reader=sandbox.decode)
    )
    assert isinstance(outcome, DecodedFrames), outcome
    expected = array.reshape(array.shape[0], 1, *array.shape[1:]) if array.ndim == 3 else array
    np.testing.assert_array_equal(outcome.array.reshape(expected.shape), expected)


HDF5_BASES = [
    hdf5_bytes(np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8), name) for name in sorted(HDF5_COMPRESSIONS)
]


@fuzz_settings(1000)
@given(base=st.sampled_from(HDF5_BASES + [s for s in SEEDS if s.startswith(b"\x89HDF")]), data=st.data())
def test_mutated_hdf5_raises_only_request_errors(sandbox, base, data):
    body = mutate(data, base)
    outcome = run_counted(
        "hdf5_mutated", lambda: decode_request(body, "application/x-hdf5", {}, SMALL_LIMITS, hdf5_reader=sandbox.decode)
    )
    check_decoded(outcome)


@fuzz_settings(400)
@given(
    seed=st.sampled_from(SEEDS), content_type=st.sampled_from(CONTENT_TYPES), options=options_strategy, data=st.data()
)
def test_mutated_corpus_seeds_raise_only_request_errors(sandbox, seed, content_type, options, data):
    body = mutate(data, seed)
    outcome = run_counted(
        "corpus_mutated", lambda: decode_request(body, content_type, options, SMALL_LIMITS, hdf5_reader=sandbox.decode)
    )
    check_decoded(outcome)


def _answer(sandbox, body: bytes):
    """The sandbox's answer to ``body`` as comparable bytes: the frames, or the error's status and type."""
    outcome = run_counted(
        "hdf5_chunks", lambda: decode_request(body, "application/x-hdf5", {}, SMALL_LIMITS, hdf5_reader=sandbox.decode)
    )
    check_decoded(outcome)
    if isinstance(outcome, RequestError):
        return (outcome.status, outcome.type)
    return (outcome.array.dtype.name, outcome.array.shape, outcome.array.tobytes())


CHUNK_DTYPES = ["uint8", "uint16", "int32", "float32", "float64"]


@fuzz_settings(800)
@given(
    name=st.sampled_from(sorted(FILTERS)),
    dtype=st.sampled_from(CHUNK_DTYPES),
    chunk=st.tuples(st.integers(1, 24), st.integers(1, 24))
    | st.tuples(st.integers(1, 4), st.integers(1, 24), st.integers(1, 24)),
    data=st.data(),
)
def test_random_and_mutated_chunk_bytes_of_every_filter_give_frames_or_4xx_deterministically(
    sandbox, name, dtype, chunk, data
):
    itemsize = np.dtype(dtype).itemsize
    chunk_bytes = int(np.prod(chunk)) * itemsize
    kind = data.draw(st.sampled_from(["random", "mutated", "valid"]), label="kind")
    if kind == "random":
        mask, stored = 0, data.draw(st.binary(min_size=1, max_size=2 * chunk_bytes + 64), label="stored")
    else:
        values = data.draw(st.binary(min_size=chunk_bytes, max_size=chunk_bytes), label="values")
        mask, stored = encoded_chunk(name, values, itemsize)
        if kind == "mutated":
            stored = mutate(data, stored) or b"\x00"
    shape = tuple(c * data.draw(st.integers(1, 2), label="grid") for c in chunk)
    offsets = [tuple(0 for _ in chunk), tuple(s - c for s, c in zip(shape, chunk, strict=True))]
    body = with_chunks(shape, dtype, tuple(chunk), name, {offset: (mask, stored) for offset in offsets})
    first, second = _answer(sandbox, body), _answer(sandbox, body)
    assert first == second
    if kind == "valid":  # both chunks hold the values; the rest of the grid is the fill value (0)
        assert first[0] == dtype, first
        frames = np.frombuffer(first[2], dtype).reshape(shape)
        expected = np.zeros(shape, dtype)
        for offset in offsets:
            place = tuple(slice(o, o + c) for o, c in zip(offset, chunk, strict=True))
            expected[place] = np.frombuffer(values, dtype).reshape(chunk)
        np.testing.assert_array_equal(frames.view(np.uint8), expected.view(np.uint8))


def test_the_sandbox_survived_the_session_so_far(sandbox):
    """After all the hostile input, the sandbox still decodes a good file and never crashed."""
    array = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    decoded = decode_request(hdf5_bytes(array, "bitshuffle"), None, {}, hdf5_reader=sandbox.decode)
    np.testing.assert_array_equal(decoded.array[:, 0], array)
    assert sandbox.restarts == 0
    assert not FUZZ_STATS.failures
