#!/usr/bin/env python3
"""Request decoding per encoding: milliseconds per detector frame from body bytes to pixels.

    python -m benchmarks.bench_decode --out benchmarks/results/decode_cpu.json
    python -m benchmarks.bench_decode --geometry jungfrau4m --encodings raw hdf5-bslz4 --out /tmp/decode.json

Encodes one simulated uint16 frame of ``--geometry`` (the load test's frames,
:func:`peaknet_serve.clients.payloads.detector_frames`) in each encoding and times the server's
:func:`peaknet_serve.decode.request.decode_request` on it: in this process (``decode_hdf5`` for HDF5
bodies) and as served, through the HDF5 sandbox's child process. Medians of ``--repeats`` after
three untimed calls; the compressed HDF5 files are compared with the uncompressed HDF5 file of the
same run (``hdf5``, always measured), raw uint16 is the floor. Every decoded frame is checked to
equal the encoded one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import environment, markdown_table, plot_rows, progress, time_ms, write_results
from peaknet_serve.clients.payloads import ENCODINGS, detector_frames, encode_request, geometry_from_name
from peaknet_serve.decode.hdf5 import decode_hdf5
from peaknet_serve.decode.request import decode_request

ROOT = Path(__file__).resolve().parents[1]
#: every encoding that reaches decode_request as the whole body (multipart is split by the handler first)
DEFAULT_ENCODINGS = tuple(e for e in ENCODINGS if e != "multipart")


def decoder(body: bytes, headers: dict[str, str], sandboxed: bool):
    """A no-argument call decoding ``body`` as the server does, in process or through the sandbox."""
    reader = None if sandboxed else decode_hdf5
    return lambda: decode_request(body, headers.get("Content-Type"), headers, hdf5_reader=reader).array


def measure(frames: np.ndarray, encoding: str, repeats: int) -> dict:
    """One row: body size and decode milliseconds of ``frames`` (1, P, H, W) in ``encoding``."""
    request = encode_request(frames, encoding)
    row: dict = {"encoding": encoding, "body_mb": len(request.body) / 1e6}
    for sandboxed, key in ((False, "in_process_ms"), (True, "served_ms")):
        decode = decoder(request.body, request.headers, sandboxed)
        if not np.array_equal(decode(), frames):
            raise SystemExit(f"{encoding}: the decoded frame differs from the encoded one")
        timing = time_ms(decode, torch.device("cpu"), repeats=repeats)
        row[key] = timing["median_ms"]
        row[key.replace("_ms", "_min_ms")] = timing["min_ms"]
        row[key.replace("_ms", "_max_ms")] = timing["max_ms"]
    return row


def plot(rows: list[dict], path: Path) -> None:
    long = [{"encoding": r["encoding"], "where": w, "ms": r[k]} for r in rows for w, k in WHERE]
    plot_rows(
        long,
        path,
        group=lambda r: r["encoding"],
        series=lambda r: r["where"],
        value="ms",
        ylabel="ms per frame (median)",
        title="decode_request, one frame per request",
        log=True,
    )


WHERE = (("in process", "in_process_ms"), ("through the HDF5 sandbox (served)", "served_ms"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", default="epix10k2m")
    parser.add_argument("--encodings", nargs="+", default=list(DEFAULT_ENCODINGS), choices=DEFAULT_ENCODINGS)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/decode_cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    frames = detector_frames(geometry_from_name(args.geometry), 1, "uint16", seed=0)
    encodings = list(dict.fromkeys(["hdf5", *args.encodings]))
    rows = []
    for encoding in encodings:
        progress(f"{encoding} ...")
        rows.append(measure(frames, encoding, args.repeats))
    baseline = rows[0]
    for row in rows:
        row["frame_mb"] = frames.nbytes / 1e6
        if row["encoding"].startswith("hdf5"):
            row["served_vs_hdf5"] = row["served_ms"] / baseline["served_ms"]
    table = markdown_table(
        rows,
        [
            ("encoding", "encoding"),
            ("frame_mb", "frame MB"),
            ("body_mb", "body MB"),
            ("in_process_ms", "in process ms"),
            ("served_ms", "served ms (sandbox)"),
            ("served_min_ms", "min"),
            ("served_max_ms", "max"),
            ("served_vs_hdf5", "served ÷ uncompressed HDF5"),
        ],
    )
    print(table)
    payload = {
        "environment": environment(torch.device("cpu")),
        "geometry": args.geometry,
        "frame_shape": list(frames.shape),
        "rows": rows,
    }
    write_results(args.out, payload, table)
    plot(rows, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
