"""Write the seed corpus of small hostile request payloads to ``tests/fuzz/corpus/``.

Each payload is one file plus an entry in ``corpus/manifest.json`` giving the Content-Type and
options to send it with and the outcome it must get (an HTTP status and error type, or "ok").
``test_corpus.py`` replays them all; the fuzz tests start from them. Files that refer to host
paths use ``/etc/passwd`` or the relative name ``sentinel.fifo`` (the replay puts a watched named
pipe there).

Run from the repository root:  PYTHONPATH=. .venv/bin/python tests/fuzz/make_corpus.py
"""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from fuzz_payloads import DEFAULT_DATASET, hdf5_bytes, npy_bytes

from tests.decode.hdf5_hostile import declared_bomb, hdf5_file, oversized_chunks, unknown_filter

CORPUS = Path(__file__).resolve().parent / "corpus"
ROOT = Path(__file__).resolve().parents[2]
SENTINEL = "sentinel.fifo"
OCTET, NPY, HDF5 = "application/octet-stream", "application/x-npy", "application/x-hdf5"


def npy_header(header: str, data: bytes = b"", version: int = 1) -> bytes:
    text = header.encode("latin1")
    width = 2 if version == 1 else 4
    return b"\x93NUMPY" + bytes([version, 0]) + len(text).to_bytes(width, "little") + text + data


# Reads each pickled body with HDF5's own filter pipeline (plain h5py); the exit status says whether
# the process survived.
_DECODE_EACH = """
import io, pickle, sys
import h5py, hdf5plugin
for body in pickle.loads(sys.stdin.buffer.read()):
    try:
        h5py.File(io.BytesIO(body), "r")["/entry_1/data_1/data"][...]
    except Exception:
        pass
"""


def find_bitshuffle_crasher(seed: int = 0, tries: int = 20_000) -> bytes | None:
    """A mutated bitshuffle file that kills a process reading it with HDF5's own filters (segfault)."""
    base = hdf5_bytes(np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8), "bitshuffle")
    rng = random.Random(seed)
    candidates = []
    for _ in range(tries):
        body = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        candidates.append(bytes(body))
    for start in range(0, len(candidates), 500):  # screen in batches, then find the one
        batch = candidates[start : start + 500]
        if not _survives(batch):
            return next(body for body in batch if not _survives([body]))
    return None


def _survives(bodies: list[bytes]) -> bool:
    result = subprocess.run(
        [sys.executable, "-c", _DECODE_EACH],
        input=pickle.dumps(bodies),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return result.returncode == 0


def entries() -> list[tuple[str, bytes, str | None, dict, dict]]:
    """(file name, body, content type, options, expected outcome)."""
    u16 = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    ok = {"status": 200}

    def err(status: int, kind: str) -> dict:
        return {"status": status, "type": kind}

    def vds(file):
        layout = h5py.VirtualLayout(shape=(2, 4, 4), dtype="u2")
        layout[:] = h5py.VirtualSource(SENTINEL, "data", shape=(2, 4, 4))
        file.create_virtual_dataset(DEFAULT_DATASET, layout, fillvalue=0)

    def soft_loop(file):
        file["/entry_1"] = h5py.SoftLink("/loop")
        file["/loop"] = h5py.SoftLink("/entry_1")

    def external_link(target, link_at=DEFAULT_DATASET):
        return hdf5_file(lambda file: file.__setitem__(link_at, h5py.ExternalLink(target, link_at)))

    def external_storage(target, shape=(2, 4, 4)):
        nbytes = int(np.prod(shape))
        return hdf5_file(
            lambda file: file.create_dataset(DEFAULT_DATASET, shape=shape, dtype="u1", external=[(target, 0, nbytes)])
        )

    def soft_to_external(file):
        file["/outside"] = h5py.ExternalLink("/etc/passwd", "/x")
        file[DEFAULT_DATASET] = h5py.SoftLink("/outside")

    seeds = [
        # valid payloads (round trips)
        ("raw_uint16.bin", u16.tobytes(), OCTET, {"X-Dtype": "uint16", "X-Shape": "2,3,4"}, ok),
        ("npy_float32.npy", npy_bytes(u16.astype(np.float32)), NPY, {}, ok),
        ("npy_fortran.npy", npy_bytes(np.asfortranarray(u16)), None, {}, ok),
        ("hdf5_gzip.h5", hdf5_bytes(u16, "gzip"), HDF5, {}, ok),
        ("hdf5_bitshuffle.h5", hdf5_bytes(u16, "bitshuffle"), None, {}, ok),
        ("hdf5_zstd_named.h5", hdf5_bytes(u16, "zstd", "/data"), HDF5, {"dataset": "/data"}, ok),
        # raw
        (
            "raw_absurd_shape.bin",
            bytes(16),
            OCTET,
            {"X-Dtype": "float64", "X-Shape": "1000000,1000000"},
            err(413, "too_large"),
        ),
        (
            "raw_size_mismatch.bin",
            bytes(23),
            OCTET,
            {"X-Dtype": "uint16", "X-Shape": "2,3,4"},
            err(400, "size_mismatch"),
        ),
        (
            "raw_wrong_dtype.bin",
            bytes(24),
            OCTET,
            {"X-Dtype": "complex128", "X-Shape": "3"},
            err(400, "unsupported_dtype"),
        ),
        ("raw_no_shape.bin", bytes(24), OCTET, {"X-Dtype": "uint8"}, err(400, "missing_option")),
        ("raw_empty.bin", b"", OCTET, {"X-Dtype": "uint8", "X-Shape": "1,1"}, err(400, "empty_body")),
        ("raw_text_type.bin", b"hello", "text/plain", {}, err(415, "unsupported_media_type")),
        # npy
        (
            "npy_pickle.npy",
            npy_bytes(np.array([[{"a": 1}]], dtype=object), allow_pickle=True),
            NPY,
            {},
            err(400, "unsupported_dtype"),
        ),
        (
            "npy_structured.npy",
            npy_bytes(np.zeros((2, 2), [("a", "<u2"), ("b", "<f4")])),
            NPY,
            {},
            err(400, "unsupported_dtype"),
        ),
        ("npy_big_endian.npy", npy_bytes(u16.astype(">u2")), NPY, {}, err(400, "unsupported_dtype")),
        (
            "npy_bomb_header.npy",
            npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }\n"),
            NPY,
            {},
            err(413, "too_large"),
        ),
        ("npy_truncated.npy", npy_bytes(u16)[:-5], NPY, {}, err(400, "size_mismatch")),
        (
            "npy_code_header.npy",
            npy_header("__import__('os').system('touch /tmp/peaknet_pwned')", bytes(8)),
            NPY,
            {},
            err(400, "bad_npy"),
        ),
        ("npy_huge_header_len.npy", b"\x93NUMPY\x02\x00\xff\xff\xff\xff{", NPY, {}, err(400, "bad_npy")),
        ("npy_nested_header.npy", npy_header("{'descr': " + "(" * 300 + "}"), NPY, {}, err(400, "bad_npy")),
        ("npy_as_hdf5.npy", npy_bytes(u16), HDF5, {}, err(400, "content_type_mismatch")),
        # hdf5
        ("hdf5_external_link.h5", external_link("/etc/passwd"), HDF5, {}, err(400, "hdf5_external_link")),
        (
            "hdf5_external_link_relative.h5",
            external_link(SENTINEL, "/entry_1"),
            HDF5,
            {},
            err(400, "hdf5_external_link"),
        ),
        ("hdf5_soft_to_external.h5", hdf5_file(soft_to_external), HDF5, {}, err(400, "hdf5_external_link")),
        ("hdf5_external_storage.h5", external_storage(SENTINEL), HDF5, {}, err(400, "hdf5_external_storage")),
        (
            "hdf5_external_storage_passwd.h5",
            external_storage("/etc/passwd", (1, 4, 4)),
            HDF5,
            {},
            err(400, "hdf5_external_storage"),
        ),
        ("hdf5_vds.h5", hdf5_file(vds), HDF5, {}, err(400, "hdf5_virtual_dataset")),
        ("hdf5_unknown_filter.h5", unknown_filter(31999), HDF5, {}, err(400, "hdf5_unsupported_filter")),
        ("hdf5_bomb.h5", declared_bomb(), HDF5, {}, err(413, "too_large")),
        ("hdf5_chunk_bomb.h5", oversized_chunks(8192), HDF5, {}, err(413, "too_large")),
        ("hdf5_soft_loop.h5", hdf5_file(soft_loop), HDF5, {}, err(400, "bad_hdf5")),
        (
            "hdf5_strings.h5",
            hdf5_file(lambda f: f.create_dataset(DEFAULT_DATASET, data=np.array([[b"ab"]]))),
            HDF5,
            {},
            err(400, "unsupported_dtype"),
        ),
        ("hdf5_truncated.h5", hdf5_bytes(u16, "gzip")[:700], HDF5, {}, err(400, "bad_hdf5")),
    ]
    crasher = find_bitshuffle_crasher()
    if crasher is not None:
        seeds.append(
            ("hdf5_bitshuffle_segfault.h5", crasher, HDF5, {}, {**err(400, "bad_hdf5"), "crashes_hdf5_filter": True})
        )
    return seeds


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    manifest = []
    for name, body, content_type, options, expect in entries():
        (CORPUS / name).write_bytes(body)
        manifest.append({"file": name, "content_type": content_type, "options": options, "expect": expect})
    (CORPUS / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(manifest)} payloads to {CORPUS}")


if __name__ == "__main__":
    main()
