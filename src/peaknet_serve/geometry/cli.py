"""``peaknet-geometry``: write a CrystFEL geometry file for the slab layout of our CXI files.

    peaknet-geometry --detector epix10k2m --clen 0.12 --energy 9.8 -o epix10k2m.geom
    peaknet-geometry --grid 2x4 --panel-shape 512x1024 --pixel-size 75 --gap 1.5 --clen 0.1 -o my.geom

``--detector`` takes a known layout (``epix10k2m``, ``jungfrau4m``, ``cspad``, ``rayonix``: the
panel positions of the shipped files); ``--grid`` lays out ``ROWSxCOLS`` panels centred on the beam,
numbered row by row, fast scan along +x. Distance, energy and gain default to the shipped files'
nominal values for a known detector and are required for a grid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from peaknet_serve.geometry import SHIPPED, ExperimentSetup, grid_geometry, nominal_setup, write_geometry
from peaknet_serve.sim.peaksim.geometry import get_geometry


def _pair(text: str, kind: type = int) -> tuple:
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not AxB")
    try:
        return kind(parts[0]), kind(parts[1])
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not AxB") from err


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    summary, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(
        prog="peaknet-geometry",
        description=summary,
        epilog=details,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    layout = p.add_mutually_exclusive_group(required=True)
    layout.add_argument("--detector", choices=SHIPPED, help="a known panel layout")
    layout.add_argument("--grid", type=_pair, metavar="ROWSxCOLS", help="a grid of panels centred on the beam")
    p.add_argument("--panel-shape", type=_pair, metavar="SSxFS", help="pixels of one panel (with --grid)")
    p.add_argument("--pixel-size", type=float, metavar="UM", help="pixel size in micrometres (with --grid)")
    p.add_argument("--gap", type=float, default=0.0, metavar="MM", help="gap between panels in mm (with --grid)")
    p.add_argument("--clen", type=float, metavar="M", help="sample-to-detector distance in metres")
    p.add_argument("--energy", type=float, metavar="KEV", help="photon energy in keV")
    p.add_argument("--adu-per-photon", type=float, help="detector gain (ADU per photon)")
    p.add_argument("--bandwidth", type=float, help="relative bandwidth (default 0.003)")
    p.add_argument(
        "--beam-offset",
        type=float,
        nargs=2,
        metavar=("X_MM", "Y_MM"),
        default=(0.0, 0.0),
        help="beam position on the detector relative to the panels' centre, in mm",
    )
    p.add_argument("-o", "--output", help="file to write (default: standard output)")
    args = p.parse_args(argv)
    if args.grid is not None and (args.panel_shape is None or args.pixel_size is None or args.clen is None):
        p.error("--grid needs --panel-shape, --pixel-size and --clen")
    if args.grid is None and (args.panel_shape is not None or args.pixel_size is not None):
        p.error("--panel-shape and --pixel-size go with --grid")
    return args


def geometry_text(args: argparse.Namespace) -> str:
    """The geometry file the parsed arguments describe."""
    if args.detector is not None:
        detector = get_geometry(args.detector)
        setup = nominal_setup(detector)
    else:
        rows, cols = args.grid
        detector = grid_geometry(
            f"grid {rows}x{cols}", rows, cols, args.panel_shape, args.pixel_size * 1e-6, args.gap * 1e-3
        )
        setup = ExperimentSetup(clen_m=args.clen)
    changes = {
        "clen_m": args.clen,
        "photon_energy_ev": None if args.energy is None else args.energy * 1000.0,
        "adu_per_photon": args.adu_per_photon,
        "bandwidth": args.bandwidth,
    }
    setup = replace(
        setup,
        **{k: v for k, v in changes.items() if v is not None},
        beam_offset_m=(args.beam_offset[0] * 1e-3, args.beam_offset[1] * 1e-3),
    )
    return write_geometry(detector, setup)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        text = geometry_text(args)
    except ValueError as err:
        print(f"peaknet-geometry: {err}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
