"""The HDF5 reader's child process: same answers as in-process, and it absorbs crashes and hangs."""

import io
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from peaknet_serve.decode.hdf5_sandbox import Hdf5ReaderFailure, Hdf5Sandbox, default_sandbox
from peaknet_serve.decode.limits import DecodeLimits
from peaknet_serve.errors import BadRequest, PayloadTooLarge, RequestError, ServerFault

CRASHER = Path(__file__).resolve().parents[1] / "fuzz" / "corpus" / "hdf5_bitshuffle_segfault.h5"


def hdf5_with(array, **kwargs) -> memoryview:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        file.create_dataset("/entry_1/data_1/data", data=array, **kwargs)
    return memoryview(buffer.getvalue())


@pytest.fixture
def sandbox():
    with Hdf5Sandbox(timeout_s=30) as box:
        yield box


GOOD = np.arange(3 * 5 * 6, dtype=np.uint16).reshape(3, 5, 6)


def test_decodes_and_reuses_one_child(sandbox):
    first = sandbox.decode(hdf5_with(GOOD, compression="gzip", chunks=(1, 5, 6)), None, DecodeLimits())
    pid = sandbox.pid
    second = sandbox.decode(hdf5_with(GOOD), None, DecodeLimits())
    assert sandbox.pid == pid and sandbox.restarts == 0
    for decoded in (first, second):
        assert decoded.shape == (3, 1, 5, 6) and decoded.dtype == np.uint16 and decoded.flags.c_contiguous
        np.testing.assert_array_equal(decoded[:, 0], GOOD)


def test_request_errors_cross_the_process_boundary_intact(sandbox):
    with pytest.raises(PayloadTooLarge) as too_large:
        sandbox.decode(hdf5_with(GOOD), None, DecodeLimits(max_pixels=10))
    assert too_large.value.type == "too_large" and "10 pixels" in too_large.value.message
    with pytest.raises(BadRequest) as missing:
        sandbox.decode(hdf5_with(GOOD), "/nope", DecodeLimits())
    assert missing.value.type == "hdf5_dataset_not_found"
    assert sandbox.restarts == 0  # a refused file is a normal answer, not a failure


def test_the_file_that_segfaulted_hdf5s_bitshuffle_filter_is_a_plain_400(sandbox):
    """Its chunk header claims 4 GB for a 128-byte chunk: refused by the reader, no crash, no restart."""
    sandbox.start()
    pid = sandbox.pid
    with pytest.raises(BadRequest) as info:
        sandbox.decode(memoryview(CRASHER.read_bytes()), None, DecodeLimits())
    assert info.value.type == "bad_hdf5" and "bitshuffle header declares" in info.value.message
    assert sandbox.restarts == 0 and sandbox.pid == pid


def test_a_child_killed_mid_request_is_a_reader_failure_and_the_next_request_works(sandbox):
    big = np.random.default_rng(0).integers(0, 5, (32, 1, 512, 512), dtype=np.uint16)
    body = hdf5_with(big, compression="gzip", chunks=(1, 1, 512, 512))
    sandbox.start()
    pid = sandbox.pid
    killer = threading.Timer(0.05, os.kill, (pid, signal.SIGKILL))
    killer.start()
    with pytest.raises(Hdf5ReaderFailure, match="restarted"):  # a server fault, never a 4xx blaming the file
        sandbox.decode(body, None, DecodeLimits(max_frames=32))
    killer.join()
    assert sandbox.restarts == 1
    np.testing.assert_array_equal(sandbox.decode(hdf5_with(GOOD), None, DecodeLimits())[:, 0], GOOD)
    assert sandbox.pid != pid


def test_a_killed_child_is_replaced(sandbox):
    sandbox.start()
    os.kill(sandbox.pid, signal.SIGKILL)
    outcomes = []
    for _ in range(2):  # the request that meets the dead child may fail; the next one must work
        try:
            outcomes.append(sandbox.decode(hdf5_with(GOOD), None, DecodeLimits()))
        except Hdf5ReaderFailure as error:
            outcomes.append(error)
    assert isinstance(outcomes[-1], np.ndarray)
    np.testing.assert_array_equal(outcomes[-1][:, 0], GOOD)


def test_a_reader_that_takes_too_long_is_killed_and_replaced():
    big = np.random.default_rng(0).integers(0, 5, (16, 1, 512, 512), dtype=np.uint16)
    body = hdf5_with(big, compression="gzip", chunks=(1, 1, 512, 512))
    with Hdf5Sandbox(timeout_s=1e-4) as impatient:
        with pytest.raises(Hdf5ReaderFailure, match="timed out") as info:
            impatient.decode(body, None, DecodeLimits())
        assert isinstance(info.value, ServerFault) and not isinstance(info.value, RequestError)
        assert info.value.to_json()["error"] | {"message": ""} == {
            "type": "hdf5_reader_failed",
            "status": 500,
            "message": "",
        }
        assert impatient.restarts == 1 and impatient.pid is None
        impatient.timeout_s = 30
        np.testing.assert_array_equal(impatient.decode(body, None, DecodeLimits()), big)


def test_close_stops_the_child():
    box = Hdf5Sandbox()
    box.start()
    pid = box.pid
    box.close()
    assert box.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_default_sandbox_is_shared():
    assert default_sandbox() is default_sandbox()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def test_memory_is_reported_and_a_large_request_does_not_stay_resident(sandbox):
    big = np.random.default_rng(1).integers(0, 9, (4, 16, 352, 384), dtype=np.uint16)
    body = hdf5_with(big, compression="gzip", chunks=(1, 1, 352, 384))
    sandbox.decode(hdf5_with(GOOD), None, DecodeLimits())
    np.testing.assert_array_equal(sandbox.decode(body, None, DecodeLimits()), big)
    memory = sandbox.last_memory
    assert memory["body_bytes"] == len(body) and memory["decoded_bytes"] == big.nbytes
    assert memory["budget_bytes"] == big.nbytes + 352 * 384 * 2 + (1 << 20)
    assert memory["peak_rss_bytes"] - memory["baseline_rss_bytes"] >= big.nbytes  # the frames were resident
    assert _rss_bytes(sandbox.pid) < memory["baseline_rss_bytes"] + 8 * (1 << 20)  # and were given back
    with pytest.raises(BadRequest):
        sandbox.decode(hdf5_with(GOOD), "/nope", DecodeLimits())
    assert sandbox.last_memory["budget_bytes"] == 0  # refused before planning


def test_the_address_space_cap_stops_an_allocation_past_the_budget():
    script = (
        "import numpy as np\n"
        "from peaknet_serve.decode import hdf5_sandbox as s\n"
        "s._cap_address_space(64 << 20)\n"
        "try:\n    np.empty(s.ADDRESS_SLACK_BYTES + (256 << 20), np.uint8); print('allocated')\n"
        "except MemoryError:\n    print('refused')\n"
        "s._uncap_address_space()\n"
        "np.empty(s.ADDRESS_SLACK_BYTES + (256 << 20), np.uint8); print('allocated')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["refused", "allocated"], result.stderr[-500:]


@dataclass(frozen=True)
class _LimitsWithAnExtraField(DecodeLimits):
    unknown: int = 1


def test_a_fault_of_the_reader_itself_is_a_reader_failure_not_a_400(sandbox):
    """A bug in the child (here: a decoder that raises) is reported as a server fault; the child lives on."""
    sandbox.start()
    pid = sandbox.pid
    body = hdf5_with(GOOD, compression="gzip", chunks=(1, 5, 6))
    # an impossible limit object makes the child's DecodeLimits(**limits) raise TypeError inside the child
    with pytest.raises(Hdf5ReaderFailure, match="TypeError"):
        sandbox.decode(body, None, _LimitsWithAnExtraField())
    assert sandbox.restarts == 0 and sandbox.pid == pid
    np.testing.assert_array_equal(sandbox.decode(body, None, DecodeLimits())[:, 0], GOOD)
