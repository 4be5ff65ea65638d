"""Fuzz-suite plumbing: one HDF5 sandbox for the session, counters, and the JSON report.

Set ``PEAKNET_FUZZ_REPORT=/path/report.json`` to have the counts of inputs tried and failures
written at the end of the session; ``PEAKNET_FUZZ_SCALE=10`` runs ten times more examples.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fuzz_payloads import FUZZ_STATS

from peaknet_serve.decode.hdf5_sandbox import Hdf5Sandbox


@pytest.fixture(scope="session")
def sandbox():
    with Hdf5Sandbox(timeout_s=30) as box:
        yield box
        FUZZ_STATS.sandbox_restarts += box.restarts


@pytest.fixture(scope="session", autouse=True)
def fuzz_report():
    started = time.monotonic()
    yield
    path = os.environ.get("PEAKNET_FUZZ_REPORT")
    if path:
        report = FUZZ_STATS.as_dict()
        report["duration_s"] = round(time.monotonic() - started, 2)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1) + "\n")
