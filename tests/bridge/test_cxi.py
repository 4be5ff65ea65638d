"""Per-chunk CXI peak files: layout, frame order from out-of-order answers, failures, frames, CrystFEL.

CrystFEL's indexamajig (on PATH, e.g. after ``source ../shared/tools/crystfel/env.sh``, or in
``../shared/tools/crystfel/bin``; skipped where absent) reads a file written with its frames and
must report the same peaks per event.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from peaknet_serve.bridge.chunks import Request, Seal
from peaknet_serve.bridge.cxi import LIST_FILE, Answer, CxiSink

ROOT = Path(__file__).resolve().parents[2]
INDEXAMAJIG = shutil.which("indexamajig") or str(ROOT.parent / "shared" / "tools" / "crystfel" / "bin" / "indexamajig")


def peaks_for(frame_number: int, k: int, panels: int = 2) -> dict:
    """A server-style per-frame peak list with ``k`` distinguishable peaks."""
    return {
        "num_peaks": k,
        "panel": [i % panels for i in range(k)],
        "ss": [float(frame_number + i) for i in range(k)],
        "fs": [float(2 * i + 1) for i in range(k)],
        "npix": [3] * k,
        "intensity": [1000.0 + frame_number * 10 + i for i in range(k)],
    }


def request(chunk: int, offset: int, first: int, n: int, shape=(2, 8, 12)) -> Request:
    frames = np.stack([np.full(shape, first + i, np.uint16) for i in range(n)])
    return Request(chunk, offset, first, frames, {"/data/timestamp": np.arange(first, first + n) / 120.0}, 1.0)


def answer(req: Request, failed: bool = False) -> Answer:
    if failed:
        return Answer(req, None, error="HTTP 503: queue full", answered_at=2.0)
    frames = [peaks_for(req.first_frame + i, (req.first_frame + i) % 4 + 1) for i in range(req.n_frames)]
    return Answer(req, frames, server={"model": "peaknet-tiny", "precision": "fp32", "device": "cpu"}, answered_at=2.0)


def test_answers_out_of_order_land_in_frame_order(tmp_path):
    sink = CxiSink(tmp_path, prefix="run7", min_peaks=3)
    parts = [request(0, 0, 0, 2), request(0, 2, 2, 2), request(0, 4, 4, 1)]
    assert sink.add(answer(parts[2])) is None
    assert sink.add(answer(parts[0])) is None
    assert not list(tmp_path.glob("*.cxi"))  # nothing visible before the chunk is complete
    assert sink.seal(Seal(0, 0, 5)) is None
    done = sink.add(answer(parts[1]))
    assert done is not None and done.path == tmp_path / "run7-000000.cxi"
    assert (done.n_frames, done.failed_frames, done.hits) == (5, 0, sum((i % 4 + 1) >= 3 for i in range(5)))
    with h5py.File(done.path, "r") as f:
        result = f["/entry_1/result_1"]
        assert list(result["nPeaks"][()]) == [i % 4 + 1 for i in range(5)]
        assert result["peakXPosRaw"].shape == (5, 2048) and result["peakXPosRaw"].dtype == np.float32
        # panels stacked along slow scan: Y = panel * H + ss (H = 8)
        for i in range(5):
            k = i % 4 + 1
            expected_y = [(j % 2) * 8 + i + j for j in range(k)]
            assert np.allclose(result["peakYPosRaw"][i, :k], expected_y)
            assert np.allclose(result["peakXPosRaw"][i, :k], [2 * j + 1 for j in range(k)])
            assert np.allclose(result["peakTotalIntensity"][i, :k], [1000 + 10 * i + j for j in range(k)])
            assert not result["peakXPosRaw"][i, k:].any()
        assert list(f["/entry_1/stream/frame_index"][()]) == [0, 1, 2, 3, 4]
        assert not f["/entry_1/stream/failed"][()].any()
        assert np.allclose(f["/entry_1/stream/events/data/timestamp"][()], np.arange(5) / 120)
        assert "/entry_1/data_1/data" not in f
        assert f.attrs["complete"] and f.attrs["n_frames"] == 5 and f.attrs["server_model"] == "peaknet-tiny"
    assert (tmp_path / LIST_FILE).read_text() == f"{done.path.resolve()}\n"
    assert sink.open_chunks == 0


def test_failed_requests_are_marked_not_dropped(tmp_path):
    sink = CxiSink(tmp_path)
    sink.seal(Seal(3, 30, 4))  # sealed before any answer
    sink.add(answer(request(3, 0, 30, 2), failed=True))
    done = sink.add(answer(request(3, 2, 32, 2)))
    assert done is not None and done.failed_frames == 2
    with h5py.File(done.path, "r") as f:
        assert list(f["/entry_1/stream/failed"][()]) == [1, 1, 0, 0]
        assert list(f["/entry_1/result_1/nPeaks"][()]) == [0, 0, 1, 2]
        assert list(f["/entry_1/stream/frame_index"][()]) == [30, 31, 32, 33]
        assert '"HTTP 503: queue full": 2' in f.attrs["failures"]


def test_frames_are_saved_as_a_slab_per_event(tmp_path):
    sink = CxiSink(tmp_path, save_frames=True)
    a, b = request(0, 0, 0, 2), request(0, 2, 2, 1)
    sink.add(answer(b))
    sink.add(answer(a))
    done = sink.seal(Seal(0, 0, 3))
    with h5py.File(done.path, "r") as f:
        data = f["/entry_1/data_1/data"]
        assert data.shape == (3, 16, 12) and data.dtype == np.uint16
        for i in range(3):
            assert (data[i] == i).all()


def test_twice_answered_frames_are_an_error(tmp_path):
    sink = CxiSink(tmp_path)
    r = request(0, 0, 0, 2)
    sink.add(answer(r))
    with pytest.raises(ValueError, match="answered twice"):
        sink.add(answer(r))


def test_abandon_removes_partial_files(tmp_path):
    sink = CxiSink(tmp_path, save_frames=True)
    sink.add(answer(request(0, 0, 0, 2)))
    partials = list(tmp_path.glob(".*partial*"))
    assert len(partials) == 1
    sink.abandon()
    assert not list(tmp_path.glob(".*partial*")) and not list(tmp_path.glob("*.cxi"))


def _geometry(path: Path, panels: int, height: int, width: int) -> None:
    lines = [
        "adu_per_photon = 1",
        "res = 10000",
        "clen = 0.1",
        "photon_energy = 9000",
        "",
        "data = /entry_1/data_1/data",
        "dim0 = %",
        "dim1 = ss",
        "dim2 = fs",
        "peak_list = /entry_1/result_1",
        "peak_list_type = cxi",
        "",
    ]
    for p in range(panels):
        lines += [
            f"p{p}/min_fs = 0",
            f"p{p}/max_fs = {width - 1}",
            f"p{p}/min_ss = {p * height}",
            f"p{p}/max_ss = {(p + 1) * height - 1}",
            f"p{p}/corner_x = {-width / 2}",
            f"p{p}/corner_y = {p * (height + 4) - panels * height / 2}",
            f"p{p}/fs = +1.0x",
            f"p{p}/ss = +1.0y",
            "",
        ]
    path.write_text("\n".join(lines))


@pytest.mark.skipif(not Path(INDEXAMAJIG).exists(), reason="CrystFEL's indexamajig not found")
def test_crystfel_reads_the_peaks(tmp_path):
    sink = CxiSink(tmp_path / "out", save_frames=True, frames_compression="gzip")
    shape = (2, 32, 40)
    parts = [request(0, 0, 0, 2, shape), request(0, 2, 2, 2, shape)]
    for part in parts:
        sink.add(answer(part))
    done = sink.seal(Seal(0, 0, 4))
    geometry = tmp_path / "slab.geom"
    _geometry(geometry, *shape)
    stream = tmp_path / "out.stream"
    result = subprocess.run(
        [
            INDEXAMAJIG,
            "-i",
            str(tmp_path / "out" / LIST_FILE),
            "-g",
            str(geometry),
            "-o",
            str(stream),
            "--peaks=cxi",
            "--indexing=none",
            "-j",
            "1",
            "--no-half-pixel-shift",
            "--no-revalidate",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = stream.read_text()
    chunks = text.split("----- Begin chunk -----")[1:]
    assert len(chunks) == 4
    for chunk in chunks:
        event = int(re.search(r"Event: //(\d+)", chunk).group(1))
        rows = (
            re.search(r"Peaks from peak search\n.*?\n(.*?)End of peak list", chunk, re.S).group(1).strip().splitlines()
        )
        k = event % 4 + 1
        assert len(rows) == k, chunk
        fs, ss, _, intensity, panel = rows[0].split()[:5]
        assert (float(fs), float(ss), panel) == (1.0, float(event), "p0")  # first peak: panel 0, ss = frame number
        assert float(intensity) == pytest.approx(1000 + 10 * event)
    assert done.path.name in text
    shutil.rmtree(tmp_path / "out")
