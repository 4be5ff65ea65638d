"""peaknet-push: a ZMQ PUSH producer of simulated frames at a fixed rate, in the facility's formats.

    peaknet-push --connect tcp://127.0.0.1:12321 --rate 120 --frames 1200 --geometry epix10k2m
    peaknet-push --bind tcp://0.0.0.0:12321 --format npz --batch 8 --geometry 1,64,64

For trying a bridge (and the server behind it) before a beamtime: messages are LCLStreamer-style
HDF5 (frames at ``/data/data``, the send time at ``/data/timestamp``, optional compression) or
Ray-pipeline-style NPZ (``detector_data``, ``timestamp``). Message ``i`` is due at
``i * batch / rate`` seconds; PUSH blocks when the consumer's queues are full, so the producer's
*lateness* (how far behind its schedule it sends) shows whether the consumer keeps up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from peaknet_serve.bridge.messages import COMPRESSIONS, hdf5_message, npz_message
from peaknet_serve.clients.payloads import geometry_from_name, simulate_frames


@dataclass(frozen=True)
class PushReport:
    """What a producer run did: lateness is send completion minus schedule, in seconds."""

    messages: int
    frames: int
    seconds: float
    frames_per_s: float
    max_lateness_s: float
    final_lateness_s: float
    megabytes: float


def encode(frames: np.ndarray, timestamps: np.ndarray, fmt: str = "hdf5", compression: str | None = None) -> bytes:
    """One message of ``(B, P, H, W)`` frames with per-frame timestamps, in ``fmt`` (``hdf5``/``npz``)."""
    if fmt == "hdf5":
        return hdf5_message({"/data/data": frames, "/data/timestamp": timestamps}, compression)
    if fmt == "npz":
        return npz_message({"detector_data": frames, "timestamp": timestamps})
    raise ValueError(f"format {fmt!r}: use hdf5 or npz")


def push(
    socket: Any,
    frames: np.ndarray,
    n_frames: int,
    rate_hz: float,
    batch: int = 1,
    fmt: str = "hdf5",
    compression: str | None = None,
    clock=time.monotonic,
) -> PushReport:
    """Send ``n_frames`` frames cycling through ``frames`` ``(K, P, H, W)``, ``batch`` per message, at ``rate_hz``."""
    if rate_hz <= 0 or batch < 1 or n_frames < 1:
        raise ValueError("rate_hz must be > 0, batch and n_frames >= 1")
    start = clock()
    sent = messages = 0
    nbytes = 0
    max_late = late = 0.0
    while sent < n_frames:
        due = start + sent / rate_hz
        wait = due - clock()
        if wait > 0:
            time.sleep(wait)
        n = min(batch, n_frames - sent)
        index = np.arange(sent, sent + n) % frames.shape[0]
        payload = encode(frames[index], np.full(n, time.time()), fmt, compression)
        socket.send(payload, copy=False)
        late = max(clock() - due, 0.0)
        max_late = max(max_late, late)
        sent += n
        messages += 1
        nbytes += len(payload)
    seconds = clock() - start
    return PushReport(messages, sent, seconds, sent / seconds if seconds > 0 else 0.0, max_late, late, nbytes / 1e6)


def main(argv: Sequence[str] | None = None) -> int:
    import zmq

    p = argparse.ArgumentParser(
        prog="peaknet-push", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bind", help="bind the PUSH socket here (the bridge connects)")
    p.add_argument("--connect", help="connect to a bridge that binds, e.g. tcp://127.0.0.1:12321")
    p.add_argument("--rate", type=float, default=120.0, help="frames per second (120)")
    p.add_argument("--frames", type=int, default=1200, help="frames to send (1200)")
    p.add_argument("--batch", type=int, default=1, help="frames per message (1)")
    p.add_argument("--geometry", default="epix10k2m", help="preset name or P,H,W (epix10k2m)")
    p.add_argument("--dtype", default="uint16", choices=["uint16", "int32", "float32"])
    p.add_argument("--format", default="hdf5", choices=["hdf5", "npz"])
    p.add_argument("--compression", choices=COMPRESSIONS, help="HDF5 compression, LCLStreamer's names")
    p.add_argument("--distinct", type=int, default=8, help="different simulated frames to cycle through (8)")
    p.add_argument("--sndhwm", type=int, default=5, help="messages queued before send blocks (5, as LCLStreamer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-json", help="write the run's report here as JSON")
    args = p.parse_args(argv)
    if bool(args.bind) == bool(args.connect):
        p.error("give exactly one of --bind and --connect")
    if args.compression and args.format != "hdf5":
        p.error("--compression applies to --format hdf5")
    frames = simulate_frames(geometry_from_name(args.geometry), args.distinct, args.dtype, seed=args.seed).frames

    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, args.sndhwm)
    if args.bind:
        socket.bind(args.bind)
    else:
        socket.connect(args.connect)
    try:
        report = push(socket, frames, args.frames, args.rate, args.batch, args.format, args.compression)
    except KeyboardInterrupt:
        return 130
    finally:
        socket.close(linger=10_000)  # let the last messages leave
        context.term()
    print(
        f"sent {report.frames} frames in {report.messages} messages over {report.seconds:.1f} s"
        f" ({report.frames_per_s:.1f} frames/s, {report.megabytes:.1f} MB);"
        f" lateness max {report.max_lateness_s * 1e3:.0f} ms, at the end {report.final_lateness_s * 1e3:.0f} ms"
    )
    if args.report_json:
        with open(args.report_json, "w") as f:
            json.dump(asdict(report), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
