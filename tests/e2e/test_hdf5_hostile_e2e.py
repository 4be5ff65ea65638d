"""Hostile HDF5 bodies through a real TorchServe: each gets its 4xx, good requests around them keep
bit-identical answers, and the server stays healthy."""

from __future__ import annotations

import zlib

import pytest
import requests

from tests.decode.hdf5_hostile import DATASET, MiB, bomb, chunk_index_bomb, hdf5_file, with_chunks
from tests.frames import spot_frames

pytestmark = pytest.mark.e2e
TIMEOUT = 60


def post(server, body: bytes) -> requests.Response:
    return requests.post(
        server.predict_url, data=body, timeout=TIMEOUT, headers={**server.headers, "Content-Type": "application/x-hdf5"}
    )


def test_bombs_and_short_chunks_are_4xx_and_good_answers_stay_identical(served):
    frames = spot_frames(n=2, p=2)
    chunk = (1, 1, *frames.shape[2:])
    good = hdf5_file(lambda f: f.create_dataset(DATASET, data=frames, chunks=chunk, compression="gzip", shuffle=True))
    sparse = with_chunks(frames.shape, "u2", chunk, "gzip", {(0, 0, 0, 0): zlib.compress(frames[0, 0].tobytes())})
    hostile = {
        "gzip bomb": (bomb("gzip", 128 * MiB), 400, "bad_hdf5"),
        "zstd bomb": (bomb("zstd", 512 * MiB), 400, "bad_hdf5"),
        "bzip2 bomb": (bomb("bzip2", 64 * MiB), 400, "bad_hdf5"),
        "chunk-index bomb": (chunk_index_bomb((4, 352, 384)), 413, "too_large"),
        "8 of 131072 bytes": (
            with_chunks((1, 256, 256), "u2", (1, 256, 256), "gzip", {(0, 0, 0): zlib.compress(bytes(8))}),
            400,
            "bad_hdf5",
        ),
    }
    answers = []
    for _ in range(3):
        for name, (body, status, kind) in hostile.items():
            response = post(served, body)
            assert (response.status_code, response.json()["error"]["type"]) == (status, kind), name
        answers.append((post(served, good).content, post(served, sparse).content))
    assert len(set(answers)) == 1
    assert all(b'"num_peaks"' in answer for answer in answers[0])
    assert requests.get(f"{served.inference_url}/ping", timeout=10).json()["status"] == "Healthy"
