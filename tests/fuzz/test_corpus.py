"""Replay every payload of the seed corpus (``make_corpus.py``) and check its recorded outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fuzz_payloads import run_counted

from peaknet_serve.decode import DecodedFrames, decode_hdf5, decode_request
from peaknet_serve.decode.hdf5_sandbox import Hdf5Sandbox
from peaknet_serve.errors import RequestError
from tests.decode.hdf5_hostile import OpenSentinel

CORPUS = Path(__file__).resolve().parent / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
ROOT = Path(__file__).resolve().parents[2]


def test_manifest_lists_exactly_the_corpus_files():
    files = {path.name for path in CORPUS.iterdir()} - {"manifest.json"}
    assert files == {entry["file"] for entry in MANIFEST}
    assert len(MANIFEST) >= 30


@pytest.mark.parametrize("entry", MANIFEST, ids=[entry["file"] for entry in MANIFEST])
def test_replay(entry, tmp_path, monkeypatch):
    """Each payload gets its recorded answer from both HDF5 readers; host files stay unopened.

    Payloads refer to ``sentinel.fifo`` relative to the working directory: the replay runs in a
    fresh directory holding a watched named pipe of that name.
    """
    monkeypatch.chdir(tmp_path)
    sentinel = OpenSentinel(tmp_path / "sentinel.fifo")
    body = (CORPUS / entry["file"]).read_bytes()
    expect = entry["expect"]
    readers = {"sandbox": None, "in_process": decode_hdf5}
    with Hdf5Sandbox(timeout_s=30) as sandbox:  # started here, so its working directory is tmp_path
        readers["sandbox"] = sandbox.decode
        for name, reader in readers.items():
            outcome = run_counted(
                "corpus",
                lambda reader=reader: decode_request(body, entry["content_type"], entry["options"], hdf5_reader=reader),
            )
            if expect["status"] == 200:
                assert isinstance(outcome, DecodedFrames), (name, outcome)
                assert outcome.array.ndim == 4 and outcome.array.size == 24
                np.testing.assert_array_equal(outcome.array.ravel(), np.arange(24))
            else:
                assert isinstance(outcome, RequestError), (name, outcome)
                assert (outcome.status, outcome.type) == (expect["status"], expect["type"]), (name, outcome)
    assert not sentinel.was_opened()


CRASHERS = [e for e in MANIFEST if e["expect"].get("crashes_hdf5_filter")]


def _run_python(script: str, body: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], input=body, cwd=ROOT, capture_output=True, timeout=60)


@pytest.mark.parametrize("entry", CRASHERS, ids=lambda e: e["file"])
def test_crashers_kill_hdf5s_own_filters_but_not_our_reader(entry):
    """HDF5's pipeline (h5py reading the dataset) segfaults on this file; our reader answers 400 in-process."""
    body = (CORPUS / entry["file"]).read_bytes()
    plain = _run_python(
        "import io, sys, h5py, hdf5plugin\n"
        "h5py.File(io.BytesIO(sys.stdin.buffer.read()), 'r')['/entry_1/data_1/data'][...]",
        body,
    )
    assert plain.returncode < 0, plain.stderr[-300:]  # killed by a signal
    ours = _run_python(
        "import sys; from peaknet_serve.decode import decode_hdf5, DecodeLimits\n"
        "from peaknet_serve.errors import RequestError\n"
        "try:\n    decode_hdf5(memoryview(sys.stdin.buffer.read()), None, DecodeLimits())\n"
        "except RequestError as error:\n    print(error.status, error.type)",
        body,
    )
    assert ours.returncode == 0 and ours.stdout.split() == [b"400", b"bad_hdf5"], ours.stderr[-300:]


def test_the_corpus_holds_a_crasher():
    assert CRASHERS, "make_corpus.py found no file that crashes HDF5's bitshuffle filter"
