"""The HDF5 reader in a child process: a file that crashes HDF5 fails one request, never the worker.

HDF5 is C code parsing hostile input: the file's metadata (superblock, object headers, chunk
index), and, in HDF5's own filter pipeline, chunk data (which the reader never hands it: corrupt
bitshuffle chunks segfault it). Request files are therefore decoded by
:func:`~peaknet_serve.decode.hdf5.decode_hdf5` in a long-lived child process:

    parent                                   child (``python -I``, numpy, h5py, decoders)
    ------                                   -----
    frame {"dataset", "limits", "size"}  ->
    body bytes                           ->  decode_hdf5(body)
                                         <-  frame {"ok": true, "dtype", "shape", "memory"} + pixel bytes
                                         <-  or frame {"ok": false, "status", "type", "message", "memory"}

A frame is an 8-byte little-endian length and a JSON document. The child's own stdout is
redirected to stderr, so nothing a C library prints can corrupt the protocol. When the child
dies, times out or answers nonsense, it is killed, the request fails with
:class:`Hdf5ReaderFailure` (500 ``hdf5_reader_failed``, not a 400 blaming the file)
and the next request starts a fresh child. The parent re-checks the reply's dtype and shape against the
limits before allocating, and fills every byte of the array it returns from the reply.

Memory, per request: once :func:`~peaknet_serve.decode.hdf5_budget.plan_dataset` has fixed the
dataset's budget, the child lowers its address-space limit to what it already maps + the
budget's :attr:`~peaknet_serve.decode.hdf5_budget.Hdf5Budget.peak_bytes` + a fixed slack, so a
decoder that tried to allocate past the budget would fail instead of growing. It resets its
peak-RSS counter (``/proc/self/clear_refs``) when a request arrives and reports the peak with
the answer (:attr:`Hdf5Sandbox.last_memory`); after each request it returns freed memory to
the system (``malloc_trim``), so one large request does not stay resident.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import resource
import select
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import BadRequest, PayloadTooLarge, RequestError, ServerFault, UnsupportedMediaType
from .dtypes import WIRE_DTYPES
from .layout import frames_shape
from .limits import DecodeLimits, check_frames_shape

_LENGTH = struct.Struct("<Q")
_MAX_FRAME_BYTES = 1 << 20
_ERRORS_BY_STATUS = {400: BadRequest, 413: PayloadTooLarge, 415: UnsupportedMediaType}
ADDRESS_SLACK_BYTES = 512 << 20
"""Address space the child may map beyond its budget during one request (libraries, metadata)."""


class SandboxFailure(Exception):
    """The child crashed, hung or broke the protocol."""


class Hdf5ReaderFailure(ServerFault):
    """500 ``hdf5_reader_failed``: the HDF5 reader died, timed out or hit a fault of its own.

    A :class:`~peaknet_serve.errors.ServerFault`, not a request error: a crash or a bug of the
    reader is answered as the server's failure, never blamed on the file with a 400.
    """

    def __init__(self, message: str) -> None:
        super().__init__("hdf5_reader_failed", message, 500)


class Hdf5Sandbox:
    """Decodes HDF5 request bodies in a child process. Thread-safe; one request at a time.

    Args:
        timeout_s: longest time one file may take to decode before the child is killed.
        memory_limit_bytes: address-space limit (``RLIMIT_AS``) of the child; ``None``: none.

    Attributes:
        restarts: how often the child was killed and replaced.
        last_memory: the child's account of the last request it answered: ``baseline_rss_bytes``
            (its RSS when the request arrived), ``peak_rss_bytes`` (its VmHWM since then),
            ``body_bytes``, ``budget_bytes`` (the planned peak allocation; 0 when refused before
            planning) and ``decoded_bytes`` once planned; ``None`` before any answer.
    """

    def __init__(self, timeout_s: float = 60.0, memory_limit_bytes: int | None = 16 << 30) -> None:
        self.timeout_s = timeout_s
        self.memory_limit_bytes = memory_limit_bytes
        self.restarts = 0
        self.last_memory: dict[str, int] | None = None
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def decode(self, view: memoryview, dataset: str | None, limits: DecodeLimits) -> np.ndarray:
        """Same contract as :func:`~peaknet_serve.decode.hdf5.decode_hdf5`, run in the child.

        Returns:
            (N, P, H, W) in the dataset's wire dtype, native byte order, C-contiguous.

        Raises:
            RequestError: what the reader raised for the file.
            Hdf5ReaderFailure: the child died, took longer than ``timeout_s`` or broke the
                protocol (it is then replaced), or failed with an error of its own.
        """
        with self._lock:
            deadline = time.monotonic() + self.timeout_s
            try:
                process = self._ensure_started()
                request = {"dataset": dataset, "limits": asdict(limits), "size": len(view)}
                _write_frame(process.stdin, request)
                _write_all(process.stdin, view)
                reply = _read_frame(process.stdout, deadline)
                self.last_memory = _memory_report(reply)
                if "failure" in reply:
                    raise Hdf5ReaderFailure(f"the HDF5 reader failed: {str(reply['failure'])[:300]}")
                if not reply.get("ok"):
                    raise _error_from_reply(reply)
                pixels = _allocate_reply(reply, limits)
                _read_into(process.stdout, memoryview(pixels).cast("B"), deadline)
            except (RequestError, Hdf5ReaderFailure):
                raise
            except (SandboxFailure, OSError, ValueError, TypeError, KeyError) as failure:
                self._stop()
                self.restarts += 1
                raise Hdf5ReaderFailure(f"the HDF5 reader failed and was restarted ({_describe(failure)})") from None
        return pixels

    def start(self) -> None:
        """Start the child now (it is otherwise started by the first request)."""
        with self._lock:
            self._ensure_started()

    def close(self) -> None:
        """Stop the child."""
        with self._lock:
            self._stop()

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> Hdf5Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ensure_started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._stop()
        parts = __name__.split(".")
        root = Path(__file__).resolve().parents[len(parts) - 1]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP, str(root), __name__, str(self.memory_limit_bytes or 0)],  # noqa: E501
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        return self._process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        process.kill()
        process.wait()


# The child imports this module without running the enclosing packages' ``__init__`` (which may
# import torch): each enclosing package becomes a bare namespace with the right ``__path__``.
_BOOTSTRAP = """
import importlib, os, sys, types
root, name, memory_limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
parts = name.split(".")
for depth in range(1, len(parts) - 1):
    package = types.ModuleType(".".join(parts[:depth]))
    package.__path__ = [os.path.join(root, *parts[:depth])]
    sys.modules[package.__name__] = package
importlib.import_module(name).serve(memory_limit)
"""


def serve(memory_limit_bytes: int = 0) -> None:
    """The child's loop: read requests from stdin, answer on (the original) stdout, until EOF."""
    from .hdf5 import decode_hdf5

    if memory_limit_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # whatever C code prints goes to stderr, never into the protocol
    requests = os.fdopen(0, "rb", buffering=0)
    while True:
        try:
            request = _read_frame(requests, deadline=None)
        except SandboxFailure:
            return  # the parent closed the pipe
        _reset_peak_rss()
        memory = {"baseline_rss_bytes": _status_bytes("VmRSS"), "body_bytes": request["size"], "budget_bytes": 0}
        body = bytearray(request["size"])
        _read_into(requests, memoryview(body), deadline=None)

        def cap(budget, memory=memory) -> None:
            memory["budget_bytes"] = budget.peak_bytes
            memory["decoded_bytes"] = budget.decoded_bytes
            _cap_address_space(budget.peak_bytes)

        try:
            pixels = decode_hdf5(memoryview(body), request["dataset"], DecodeLimits(**request["limits"]), on_budget=cap)
        except RequestError as error:
            reply = {"ok": False, **error.to_json()["error"]}
            pixels = None
        except Exception as error:  # noqa: BLE001 - a fault of the reader, reported as such
            reply = {"ok": False, "failure": f"{type(error).__name__}: {_describe(error)}"}
            pixels = None
        finally:
            _uncap_address_space()
        memory["peak_rss_bytes"] = _status_bytes("VmHWM")
        del body
        if pixels is None:
            _write_frame(replies, {**reply, "memory": memory})
        else:
            _write_frame(
                replies, {"ok": True, "dtype": pixels.dtype.name, "shape": list(pixels.shape), "memory": memory}
            )
            _write_all(replies, memoryview(pixels).cast("B"))
        del pixels
        _trim_heap()


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM, VmSize) in bytes; 0 where absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    """Start VmHWM afresh at the current RSS (Linux >= 4.0); harmless where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def _cap_address_space(budget_bytes: int) -> None:
    """Lower the soft RLIMIT_AS to what is mapped now + ``budget_bytes`` + the slack."""
    mapped = _status_bytes("VmSize")
    if not mapped:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = mapped + budget_bytes + ADDRESS_SLACK_BYTES
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _uncap_address_space() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _trim_heap() -> None:
    """Give freed heap pages back to the system (glibc keeps them otherwise)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _memory_report(reply: dict) -> dict[str, int] | None:
    memory = reply.get("memory")
    if not isinstance(memory, dict) or not all(isinstance(v, int) for v in memory.values()):
        return None
    return {str(k): v for k, v in memory.items()}


def _allocate_reply(reply: dict, limits: DecodeLimits) -> np.ndarray:
    """An empty array for the pixels the child announced, after checking them against limits."""
    dtype = WIRE_DTYPES.get(reply["dtype"])
    shape = reply["shape"]
    if dtype is None or not isinstance(shape, list) or len(shape) != 4:
        raise SandboxFailure(f"malformed reply {reply!r:.100}")
    if not all(type(d) is int for d in shape):
        raise SandboxFailure(f"malformed reply {reply!r:.100}")
    check_frames_shape(frames_shape(shape), limits)
    return np.empty(shape, dtype=dtype)


def _error_from_reply(reply: dict) -> RequestError:
    status, kind, message = reply.get("status"), reply.get("type"), reply.get("message")
    if status not in _ERRORS_BY_STATUS or not isinstance(kind, str) or not isinstance(message, str):
        raise SandboxFailure(f"malformed reply {reply!r:.100}")
    return _ERRORS_BY_STATUS[status](kind, message)


def _write_frame(stream, document: dict) -> None:
    payload = json.dumps(document).encode("utf-8")
    _write_all(stream, _LENGTH.pack(len(payload)) + payload)


def _write_all(stream, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = stream.write(view)
        view = view[written:]


def _read_frame(stream, deadline: float | None) -> dict:
    header = bytearray(_LENGTH.size)
    _read_into(stream, memoryview(header), deadline)
    (length,) = _LENGTH.unpack(header)
    if length > _MAX_FRAME_BYTES:
        raise SandboxFailure(f"frame of {length} bytes")
    payload = bytearray(length)
    _read_into(stream, memoryview(payload), deadline)
    document = json.loads(payload)
    if not isinstance(document, dict):
        raise SandboxFailure("frame is not a JSON object")
    return document


def _read_into(stream, target: memoryview, deadline: float | None) -> None:
    """Fill ``target`` from ``stream`` (an unbuffered pipe), waiting at most until ``deadline``."""
    filled = 0
    while filled < len(target):
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
                raise SandboxFailure("timed out")
        count = stream.readinto(target[filled:])
        if not count:
            raise SandboxFailure("the reader process died")
        filled += count


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


_default_sandbox: Hdf5Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Hdf5Sandbox:
    """The process-wide sandbox used by :func:`~peaknet_serve.decode.decode_request` by default."""
    global _default_sandbox
    with _default_lock:
        if _default_sandbox is None:
            _default_sandbox = Hdf5Sandbox()
            atexit.register(_default_sandbox.close)
        return _default_sandbox
