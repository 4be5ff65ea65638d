"""CrystFEL geometry files for the slab layout of our CXI files.

Every CXI file the server and ``peaknet-peakfind`` write holds its frames, mask and peaks in one
*slab* layout: the ``P`` panels of a frame (each ``H x W``) are stacked along slow scan into one
``(P*H, W)`` image, so panel ``p`` is rows ``p*H .. p*H + H - 1`` and a peak at ``(panel, ss, fs)``
has ``peakXPosRaw = fs`` and ``peakYPosRaw = panel*H + ss``. CrystFEL's ``--peaks=cxi`` reader maps
peaks with slab coordinates only, so the geometry must describe the same slab:

    data = /entry_1/data_1/data        dim0 = %, dim1 = ss, dim2 = fs   ((N, P*H, W))
    p<k>/min_ss = k*H, p<k>/max_ss = k*H + H - 1, min_fs = 0, max_fs = W - 1

Positions follow :class:`peaknet_serve.sim.peaksim.geometry.DetectorGeometry`: a panel's
``corners[k]`` is the lab ``(x, y)`` (metres, from the beam) of the *centre* of its pixel
``(0, 0)``, its pixels step along ``fs_vectors[k]`` / ``ss_vectors[k]``. CrystFEL's ``corner_x/y``
is the *outer corner* of that pixel in pixel units, so ``corner = centre/pixel - (fs + ss)/2``.
Our peak coordinates put pixel centres at integers (``(0, 0)`` is the first pixel's centre) and
CrystFEL's default half-pixel shift (+0.5) moves them to its corner-origin convention; the two
together place a peak at exactly the lab position peaksim's ``lab_to_panel`` gives it. Both frames
are right-handed with +z along the beam, so lab x and y carry over unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, DetectorGeometry, _grid_layout, get_geometry

__all__ = [
    "DATA_PATH",
    "MASK_PATH",
    "NOMINAL_PHOTON_ENERGY_EV",
    "PEAK_LIST_PATH",
    "ExperimentSetup",
    "SHIPPED",
    "grid_geometry",
    "nominal_setup",
    "shipped_geometry_path",
    "write_geometry",
]

DATA_PATH = "/entry_1/data_1/data"
MASK_PATH = "/entry_1/data_1/mask"
PEAK_LIST_PATH = "/entry_1/result_1"
NOMINAL_PHOTON_ENERGY_EV = 9500.0
SHIPPED = tuple(GEOMETRIES)


@dataclass(frozen=True)
class ExperimentSetup:
    """What a geometry file fixes besides the panels.

    Attributes:
        clen_m: sample-to-detector distance along the beam (metres).
        photon_energy_ev: incident photon energy (eV).
        adu_per_photon: detector gain (ADU per photon); CrystFEL uses it only for error estimates.
        bandwidth: relative bandwidth (sigma of a Gaussian spectrum), for spot prediction.
        beam_offset_m: lab (x, y) of the beam on the detector relative to the panels' nominal
            centre (peaksim's ``FrameParams.beam_offset``); CrystFEL sees the panels shifted by
            minus this.
    """

    clen_m: float
    photon_energy_ev: float = NOMINAL_PHOTON_ENERGY_EV
    adu_per_photon: float = 1.0
    bandwidth: float = 0.003
    beam_offset_m: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not self.clen_m > 0:
            raise ValueError(f"clen must be > 0 m, got {self.clen_m}")
        if not self.photon_energy_ev > 0:
            raise ValueError(f"photon energy must be > 0 eV, got {self.photon_energy_ev}")
        if not self.adu_per_photon > 0:
            raise ValueError(f"adu_per_photon must be > 0, got {self.adu_per_photon}")
        if not 0 <= self.bandwidth < 1:
            raise ValueError(f"bandwidth must lie in [0, 1), got {self.bandwidth}")


def nominal_setup(detector: DetectorGeometry) -> ExperimentSetup:
    """The setup of the shipped files: the middle of peaksim's distance range for the detector,
    9.5 keV, and the geometric mean of its gain range (ADU per keV) times the photon energy."""
    low, high = detector.distance_range
    gain_low, gain_high = detector.adu_per_kev_range
    adu_per_photon = float(np.sqrt(gain_low * gain_high)) * NOMINAL_PHOTON_ENERGY_EV / 1000.0
    return ExperimentSetup(clen_m=round((low + high) / 2, 4), adu_per_photon=float(f"{adu_per_photon:.4g}"))


def grid_geometry(
    name: str, rows: int, cols: int, panel_shape: tuple[int, int], pixel_size: float, gap: float = 0.0
) -> DetectorGeometry:
    """A user's detector: ``rows x cols`` panels of ``(ss, fs)`` pixels centred on the beam, ``gap``
    metres apart, fs along +x and ss along +y, numbered row by row (peaksim's own layout rule)."""
    if rows < 1 or cols < 1 or min(panel_shape) < 1 or not pixel_size > 0 or gap < 0:
        raise ValueError("need rows, cols and panel sizes >= 1, pixel_size > 0 and gap >= 0")
    shape = (int(panel_shape[0]), int(panel_shape[1]))
    corners, fs_vectors, ss_vectors = _grid_layout(rows, cols, shape, float(pixel_size), float(gap))
    return DetectorGeometry(name, shape, float(pixel_size), corners, fs_vectors, ss_vectors)


def _vector(v: np.ndarray) -> str:
    return f"{v[0]:+.6f}x {v[1]:+.6f}y"


def write_geometry(
    detector: DetectorGeometry,
    setup: ExperimentSetup,
    title: str | None = None,
    *,
    data_path: str = DATA_PATH,
    multi_event: bool = True,
    mask: bool = True,
    peak_list: bool = True,
) -> str:
    """The CrystFEL geometry text (0.10 and later) for ``detector`` in the slab layout.

    One panel ``p<k>`` per detector panel, rows ``k*H .. k*H + H - 1`` of the slab (module
    docstring). By default the frames are ``(N, P*H, W)`` at :data:`DATA_PATH` (``dim0 = %``), the
    mask at :data:`MASK_PATH` (1 = good pixel; static ``(P*H, W)`` or per frame) and the peaks at
    :data:`PEAK_LIST_PATH`, the layout of our CXI files. ``multi_event=False`` describes one 2-D
    slab per file (as ``pattern_sim`` writes); ``mask``/``peak_list`` drop those lines.
    """
    n_ss, n_fs = detector.panel_shape
    pixel = detector.pixel_size
    offset = np.asarray(setup.beam_offset_m, dtype=np.float64)
    slab = f"({'N, ' if multi_event else ''}{detector.n_panels * n_ss}, {n_fs})"
    lines = [
        f"; {title or f'{detector.name}: {detector.n_panels} panel(s) of {n_ss} x {n_fs} pixels'}",
        f"; Slab layout: panel k is rows k*{n_ss} .. k*{n_ss}+{n_ss - 1} of {data_path} {slab}.",
        "; Peak lists put pixel centres at integer coordinates: keep indexamajig's half-pixel shift.",
        "; Written by peaknet-geometry.",
        "",
        f"photon_energy = {setup.photon_energy_ev:.6g} eV",
        f"bandwidth = {setup.bandwidth:.6g}",
        f"clen = {setup.clen_m:.6g} m",
        "coffset = 0.0",
        f"res = {1.0 / pixel:.6f}",
        f"adu_per_photon = {setup.adu_per_photon:.6g}",
        "",
        f"data = {data_path}",
        *(["dim0 = %", "dim1 = ss", "dim2 = fs"] if multi_event else ["dim0 = ss", "dim1 = fs"]),
    ]
    if mask:
        lines += [f"mask0_data = {MASK_PATH}", "mask0_goodbits = 0x1", "mask0_badbits = 0x0"]
    if peak_list:
        lines += [f"peak_list = {PEAK_LIST_PATH}", "peak_list_type = cxi"]
    lines.append("")
    for k in range(detector.n_panels):
        fs_vec, ss_vec = detector.fs_vectors[k], detector.ss_vectors[k]
        corner = (detector.corners[k] - offset) / pixel - 0.5 * (fs_vec + ss_vec)
        name = f"p{k}"
        lines += [
            f"{name}/min_fs = 0",
            f"{name}/max_fs = {n_fs - 1}",
            f"{name}/min_ss = {k * n_ss}",
            f"{name}/max_ss = {k * n_ss + n_ss - 1}",
            f"{name}/fs = {_vector(fs_vec)}",
            f"{name}/ss = {_vector(ss_vec)}",
            f"{name}/corner_x = {corner[0]:.4f}",
            f"{name}/corner_y = {corner[1]:.4f}",
            "",
        ]
    return "\n".join(lines)


def shipped_geometry_path(name: str) -> Path:
    """The packaged geometry file of a peaksim detector (``epix10k2m``, ``jungfrau4m``, ``cspad``,
    ``rayonix``), written by :func:`write_geometry` with :func:`nominal_setup`."""
    detector = get_geometry(name)
    return Path(str(resources.files(__package__) / "files" / f"{detector.name}.geom"))
