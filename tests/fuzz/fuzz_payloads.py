"""Builders of valid request payloads, shared by the fuzz tests and ``make_corpus.py``."""

from __future__ import annotations

import io
import os
from collections import defaultdict
from dataclasses import dataclass, field

import h5py
import hdf5plugin
import numpy as np

DEFAULT_DATASET = "/entry_1/data_1/data"
FUZZ_SCALE = float(os.environ.get("PEAKNET_FUZZ_SCALE", "1"))


def examples(count: int) -> int:
    """``count`` Hypothesis examples, scaled by ``PEAKNET_FUZZ_SCALE``."""
    return max(1, int(count * FUZZ_SCALE))


@dataclass
class FuzzStats:
    """Per target: inputs tried, inputs rejected with a RequestError, other exceptions."""

    inputs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sandbox_restarts: int = 0

    def as_dict(self) -> dict:
        return {
            "inputs_tried": sum(self.inputs.values()),
            "rejected_with_4xx": sum(self.rejected.values()),
            "failures": sum(self.failures.values()),
            "hdf5_sandbox_restarts": self.sandbox_restarts,
            "fuzz_scale": FUZZ_SCALE,
            "by_target": {
                name: {
                    "inputs": self.inputs[name],
                    "rejected_with_4xx": self.rejected[name],
                    "failures": self.failures[name],
                }
                for name in sorted(self.inputs)
            },
        }


FUZZ_STATS = FuzzStats()


def run_counted(target: str, call):
    """Run one fuzz input: a RequestError is a fine answer, anything else is counted and re-raised.

    Returns the call's result, or the RequestError it raised.
    """
    from peaknet_serve.errors import RequestError

    FUZZ_STATS.inputs[target] += 1
    try:
        return call()
    except RequestError as error:
        FUZZ_STATS.rejected[target] += 1
        assert error.status in (400, 413, 415), error
        assert error.type and error.message
        return error
    except Exception:  # not BaseException: Hypothesis steers examples with BaseException subclasses
        FUZZ_STATS.failures[target] += 1
        raise


HDF5_COMPRESSIONS: dict[str, dict] = {
    "plain": {},
    "gzip": {"compression": "gzip", "shuffle": True},
    "lz4": dict(hdf5plugin.LZ4()),
    "bitshuffle": dict(hdf5plugin.Bitshuffle()),
    "bitshuffle+zstd": dict(hdf5plugin.Bitshuffle(cname="zstd")),
    "zstd": dict(hdf5plugin.Zstd()),
    "bzip2": dict(hdf5plugin.BZip2()),
    "blosc": dict(hdf5plugin.Blosc()),
    "lzf": {"compression": "lzf"},
    "fletcher32": {"fletcher32": True, "compression": "gzip"},
}


def npy_bytes(array: np.ndarray, **kwargs) -> bytes:
    """``array`` as a ``.npy`` file."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, **kwargs)
    return buffer.getvalue()


def hdf5_bytes(array: np.ndarray, compression: str = "plain", path: str = DEFAULT_DATASET) -> bytes:
    """``array`` as dataset ``path`` of an HDF5 file (chunked per 2-D image when compressed)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        options = HDF5_COMPRESSIONS[compression]
        chunks = (*([1] * (array.ndim - 2)), *array.shape[-2:]) if options else None
        file.create_dataset(path, data=array, chunks=chunks, **options)
    return buffer.getvalue()
