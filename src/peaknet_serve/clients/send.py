#!/usr/bin/env python3
"""Send one simulated detector frame to the server and print the peaks it found.

    peaknet-send                          # ePix10k2M, uint16, raw bytes
    peaknet-send --geometry jungfrau4m --dtype float32 --encoding npy

The frame comes from the project's SFX simulator (:mod:`peaknet_serve.sim.peaksim`), so the answer can be scored
against the simulator's truth (strong spots matched within 2 px), which the script prints too.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import requests

from peaknet_serve.clients.client import KeySource
from peaknet_serve.clients.payloads import encode_request
from peaknet_serve.sim.peaksim.frame import simulate_frame
from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, get_geometry
from peaknet_serve.wire import DEFAULT_URL


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--model", default="peaknet")
    parser.add_argument("--geometry", default="epix10k2m", choices=sorted(GEOMETRIES))
    parser.add_argument("--dtype", default="uint16", choices=["uint16", "float32"])
    parser.add_argument("--encoding", default="raw", choices=["raw", "npy", "hdf5", "hdf5-zstd", "multipart"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--token", default=None, help="inference key when token authorisation is on")
    parser.add_argument("--key-file", default=None, help="TorchServe key_file.json to read the key from")
    args = parser.parse_args()

    frame = simulate_frame(get_geometry(args.geometry), np.random.default_rng(args.seed))
    pixels = frame.uint16 if args.dtype == "uint16" else frame.adu.astype(np.float32)
    request = encode_request(pixels[None], args.encoding)
    headers = {**request.headers, **KeySource(args.token, args.key_file).headers()}
    print(
        f"sending one {args.geometry} frame {pixels.shape} {args.dtype} as {args.encoding} "
        f"({len(request.body) / 1e6:.1f} MB) to {args.url}/predictions/{args.model}"
    )
    started = time.perf_counter()
    response = requests.post(f"{args.url}/predictions/{args.model}", data=request.body, headers=headers, timeout=120)
    elapsed_ms = 1e3 * (time.perf_counter() - started)
    if response.status_code != 200:
        print(f"HTTP {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    answer = response.json()
    found = answer["frames"][0]
    print(f"model {answer['model']}, {answer['precision']} on {answer['device']}, {elapsed_ms:.0f} ms")
    print(f"{found['num_peaks']} peaks; the 10 brightest (panel, ss, fs, pixels, intensity ADU):")
    order = np.argsort(found["intensity"])[::-1][:10]
    for i in order:
        print(
            f"  {found['panel'][i]:3d} {found['ss'][i]:8.2f} {found['fs'][i]:8.2f} "
            f"{found['npix'][i]:4d} {found['intensity'][i]:12.0f}"
        )

    points = np.stack([found["panel"], found["ss"], found["fs"]], axis=1) if found["num_peaks"] else np.zeros((0, 3))
    counts = frame.score(points)
    print(
        f"against the simulator's truth ({int(frame.peaks.strong.sum())} strong spots): "
        f"precision {counts.precision:.3f}, recall {counts.recall:.3f}, F1 {counts.f1:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
