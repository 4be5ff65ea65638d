"""decode_request with the real HDF5 reader process: a reader that dies on a request is the server's
fault (500 ``hdf5_reader_failed``), a file the reader refuses stays the client's (400), and the next
request is served by a fresh reader."""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import h5py
import numpy as np
import pytest

from peaknet_serve.decode import decode_request, default_sandbox
from peaknet_serve.errors import BadRequest, ServerFault


def hdf5_body(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=array, compression="gzip")
    return buffer.getvalue()


def test_a_reader_killed_mid_request_is_a_server_fault_and_the_next_request_is_served():
    frames = np.arange(2 * 2 * 16 * 24, dtype=np.uint16).reshape(2, 2, 16, 24)
    body = hdf5_body(frames)
    sandbox = default_sandbox()
    assert np.array_equal(decode_request(body, "application/x-hdf5", {}).array, frames)
    reader = sandbox.pid
    os.kill(reader, signal.SIGSTOP)  # the reader will hold the next request ...
    killer = threading.Timer(0.5, os.kill, (reader, signal.SIGKILL))  # ... and die holding it
    killer.start()
    started = time.monotonic()
    with pytest.raises(ServerFault) as info:
        decode_request(body, "application/x-hdf5", {})
    killer.join()
    assert info.value.status == 500 and info.value.type == "hdf5_reader_failed"
    assert info.value.to_json()["error"]["status"] == 500 and time.monotonic() - started < 30
    assert np.array_equal(decode_request(body, "application/x-hdf5", {}).array, frames)
    assert sandbox.pid != reader


def test_a_file_the_reader_refuses_stays_a_client_error():
    body = hdf5_body(np.zeros((2, 2, 16, 24), np.uint16))
    with pytest.raises(BadRequest) as info:
        decode_request(body, "application/x-hdf5", {"X-Dataset": "/no/such/dataset"})
    assert info.value.status == 400 and info.value.type == "hdf5_dataset_not_found"
