"""Write sample input: simulated serial-crystallography frames as a CXI file (``peaknet-simulate``).

    peaknet-simulate --geometry epix10k2m --frames 8 --uint16 -o run0001.cxi
    peaknet-peakfind run0001.cxi -o peaks/             # its peaks through a running server
    peaknet-loadtest --input run0001.cxi --rate 120     # or load-test with its frames

The frames are :mod:`peaknet_serve.sim.peaksim` frames (random cell and orientation, Ewald-sphere
reflections, water ring, Poisson noise, detector gain, bad pixels, a beamstop) with their truth peak
lists; the layout is :func:`peaknet_serve.sim.peaksim.cxi.write_cxi`'s: ``/entry_1/data_1/data`` holds
(N, P, H, W) float32 ADU (or uint16 with ``--uint16``; (N, H, W) for a single-panel detector).
Frame ``i`` is simulated from ``np.random.default_rng([seed, i])``: the same command writes the same file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from peaknet_serve.sim.peaksim.cxi import write_cxi
from peaknet_serve.sim.peaksim.frame import simulate_frame
from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, get_geometry


def simulate_file(
    path: Path,
    geometry: str,
    frames: int,
    seed: int = 0,
    as_uint16: bool = False,
    artefact_probability: float = 0.0,
    compression: str | None = None,
) -> Path:
    """Simulate ``frames`` frames of ``geometry`` and write them, with their truth, to ``path``."""
    detector = get_geometry(geometry)
    simulated = [
        simulate_frame(detector, np.random.default_rng([seed, i]), artefact_probability=artefact_probability)
        for i in range(frames)
    ]
    return write_cxi(path, simulated, as_uint16=as_uint16, compression=compression, detector=geometry)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="CXI file to write")
    parser.add_argument("--geometry", default="epix10k2m", choices=sorted(GEOMETRIES))
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uint16", action="store_true", help="store raw-like uint16 instead of float32 ADU")
    parser.add_argument("--compression", choices=["gzip", "lzf"], default=None)
    parser.add_argument(
        "--artefact-probability",
        type=float,
        default=0.0,
        help="chance per frame of a jet streak, a beamstop arm and common-mode offsets each",
    )
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    path = simulate_file(
        args.output, args.geometry, args.frames, args.seed, args.uint16, args.artefact_probability, args.compression
    )
    print(f"wrote {args.frames} {args.geometry} frame(s) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
