"""Test frames whose Bragg spots come from CrystFEL's ``pattern_sim`` (0.10.2): sharp spots of small crystals.

``pattern_sim`` computes each crystal's shape transform on every pixel of a CrystFEL geometry; for
crystals of a few hundred nm nearly every spot falls into one or two pixels, a regime the training
simulator only approaches. The frames are used to test, never to train.

A frame is built in two steps:

1. :func:`run_pattern_sim` writes noise-free spot images (``--no-noise``, no fringes, random
   orientations, its own deterministic random numbers) on :func:`crystfel_geometry` of a
   :mod:`peaknet_serve.sim.peaksim.geometry` detector, read back as (P, ss, fs) float32.
2. :func:`detector_frame` scales them to photons, adds a radial background with a water ring, and
   applies Poisson noise, gain, Gaussian read noise, saturation and a mask (panel edges, dead
   pixels), all from a seeded ``numpy.random.Generator``.

Truth (:func:`spot_truth`), from the expected spot photons: a spot is a connected component
(8-connected, within a panel) of pixels holding >= :data:`SPOT_PIXEL_PHOTONS` expected photons.
Its integration box is the component grown by one pixel (``n`` pixels); with ``S`` the spot
photons, ``B`` the background photons in the box and ``r`` the read noise (photons)::

    I/sigma = S / sqrt(S + 1.25 (B + n r^2))

*strong*: ``I/sigma >= 6``, brightest pixel >= 1 expected photon and >= 3 ``sqrt(b + r^2)``,
centre pixel good, box on the panel, one local maximum (two reflections in one component are one
blob: weak); *weak* (detections near it count neither way): every other spot with
``I/sigma >= 2``.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from peaknet_serve.sim.peaksim.geometry import DetectorGeometry

SPOT_PIXEL_PHOTONS = 0.05
STRONG_I_OVER_SIGMA = 6.0
WEAK_I_OVER_SIGMA = 2.0
PEAK_PIXEL_SIGMAS = 3.0
PEAK_PIXEL_MIN_PHOTONS = 1.0
_IN_PANEL_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PANEL_8[1] = True

LYSOZYME_CELL = """CrystFEL unit cell file version 1.0

lattice_type = tetragonal
centering = P
unique_axis = c

a = 79.1 A
b = 79.1 A
c = 37.9 A

al = 90.0 deg
be = 90.0 deg
ga = 90.0 deg
"""


def crystfel_geometry(geometry: DetectorGeometry, distance: float, photon_energy_ev: float) -> str:
    """CrystFEL geometry text of ``geometry``: panels stacked along ss in one (P * ss, fs) slab,
    ``/data/data``, 1 ADU per photon, camera length ``distance`` (m)."""
    n_ss, n_fs = geometry.panel_shape
    lines = [
        "adu_per_photon = 1.0",
        f"photon_energy = {photon_energy_ev:g}",
        f"clen = {distance:g}",
        f"res = {1.0 / geometry.pixel_size:.6f}",
        "data = /data/data",
        "",
    ]
    for i in range(geometry.n_panels):
        # corner_x/y: the outer corner of pixel (0, 0), in pixels; corners[] holds its centre.
        corner = geometry.corners[i] / geometry.pixel_size - 0.5 * (geometry.fs_vectors[i] + geometry.ss_vectors[i])
        fs, ss = geometry.fs_vectors[i], geometry.ss_vectors[i]
        lines += [
            f"p{i}/min_fs = 0",
            f"p{i}/max_fs = {n_fs - 1}",
            f"p{i}/min_ss = {i * n_ss}",
            f"p{i}/max_ss = {(i + 1) * n_ss - 1}",
            f"p{i}/corner_x = {corner[0]:.4f}",
            f"p{i}/corner_y = {corner[1]:.4f}",
            f"p{i}/fs = {fs[0]:+.6f}x {fs[1]:+.6f}y",
            f"p{i}/ss = {ss[0]:+.6f}x {ss[1]:+.6f}y",
            "",
        ]
    return "\n".join(lines)


def run_pattern_sim(
    geometry: DetectorGeometry,
    n_frames: int,
    distance: float,
    photon_energy_ev: float,
    min_size_nm: float,
    max_size_nm: float,
    program: str = "pattern_sim",
    cell: str = LYSOZYME_CELL,
    timeout_s: float = 3600.0,
) -> list[np.ndarray]:
    """Noise-free spot images of ``n_frames`` randomly oriented crystals of ``min_size_nm`` to
    ``max_size_nm``, each (P, ss, fs) float32 in pattern_sim's photon units (its default
    fluence and uniform intensities; :func:`detector_frame` rescales them).

    Raises:
        RuntimeError: pattern_sim failed (its stderr's end in the message).
    """
    n_ss, n_fs = geometry.panel_shape
    with tempfile.TemporaryDirectory(prefix="pattern_sim-") as tmp:
        folder = Path(tmp)
        (folder / "detector.geom").write_text(crystfel_geometry(geometry, distance, photon_energy_ev))
        (folder / "crystal.cell").write_text(cell)
        command = [
            program,
            "-g",
            "detector.geom",
            "-p",
            "crystal.cell",
            "-o",
            "frame.h5",
            "-n",
            str(n_frames),
            "-r",
            "--no-noise",
            "--no-fringes",
            f"--min-size={min_size_nm:g}",
            f"--max-size={max_size_nm:g}",
        ]
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout_s)
        files = sorted(folder.glob("frame.h5-*.h5"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
        if done.returncode != 0 or len(files) != n_frames:
            raise RuntimeError(f"pattern_sim failed ({done.returncode}): {done.stderr[-2000:]}")
        images = []
        for path in files:
            with h5py.File(path, "r") as handle:
                slab = np.asarray(handle["/data/data"], dtype=np.float32)
            images.append(slab.reshape(geometry.n_panels, n_ss, n_fs))
    return images


@dataclass(frozen=True)
class DetectorSettings:
    """What :func:`detector_frame` drew for one frame (photons unless noted)."""

    brightest_photons: float
    background: float
    gain: float
    read_noise: float
    saturation_adu: float


@dataclass(frozen=True)
class PatternSimFrame:
    """One test frame.

    Attributes:
        adu: (P, ss, fs) float32 calibrated ADU.
        mask: (P, ss, fs) uint8, 1 = good pixel.
        strong, weak: (K, 3) / (M, 3) float64 rows (panel, ss, fs).
        i_over_sigma: (K,) float64 of the strong spots.
        settings: the detector draw.
    """

    adu: np.ndarray
    mask: np.ndarray
    strong: np.ndarray
    weak: np.ndarray
    i_over_sigma: np.ndarray
    settings: DetectorSettings


def radial_background(geometry: DetectorGeometry, distance: float, wavelength_a: float, level: float) -> np.ndarray:
    """(P, ss, fs) float32 expected background photons: a water ring at Q = 2.0 1/A over a flat
    floor of 20% and a small-angle term, scaled so the ring's top is ``level``."""
    x, y = geometry.pixel_lab_xy()
    two_theta = np.arctan2(np.hypot(x, y), distance)
    q = 4.0 * np.pi * np.sin(two_theta / 2.0) / wavelength_a
    profile = 0.2 + np.exp(-0.5 * ((q - 2.0) / 0.35) ** 2) + 0.3 / (1.0 + (q / 0.2) ** 2)
    return (level * profile / profile.max() * np.cos(two_theta) ** 3).astype(np.float32)


def detector_frame(
    rng: np.random.Generator, geometry: DetectorGeometry, spots: np.ndarray, distance: float, wavelength_a: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, DetectorSettings]:
    """Photons and detector response for one noise-free spot image (P, ss, fs).

    Returns:
        ``(adu, mask, expected_spots, background, settings)``: float32 ADU, uint8 mask, float64
        expected spot photons and float32 expected background photons, each (P, ss, fs).
    """
    brightest = float(np.exp(rng.uniform(np.log(80.0), np.log(8000.0))))
    expected_spots = spots.astype(np.float64) * (brightest / max(float(spots.max()), 1e-12))
    level = float(np.exp(rng.uniform(np.log(0.005), np.log(8.0))))
    background = radial_background(geometry, distance, wavelength_a, level)
    photon_kev = 12.398419843 / wavelength_a
    gain = float(np.exp(rng.uniform(np.log(1.0), np.log(20.0)))) * photon_kev  # ADU per photon
    read_noise = float(np.exp(rng.uniform(np.log(0.02), np.log(0.3))))  # photons
    saturation = float(min(65535.0, gain * np.exp(rng.uniform(np.log(1000.0), np.log(20000.0)))))
    photons = rng.poisson(expected_spots + background).astype(np.float32)
    adu = photons * np.float32(gain) + rng.standard_normal(photons.shape, dtype=np.float32) * np.float32(
        read_noise * gain
    )
    np.minimum(adu, np.float32(saturation), out=adu)
    mask = geometry.border_mask() == 0
    dead = rng.random(adu.shape, dtype=np.float32) < 3e-4
    adu[dead] = 0.0
    mask = (mask & ~dead).astype(np.uint8)
    return adu, mask, expected_spots, background, DetectorSettings(brightest, level, gain, read_noise, saturation)


def spot_truth(
    expected_spots: np.ndarray, background: np.ndarray, mask: np.ndarray, read_noise: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(strong (K, 3), weak (M, 3), i_over_sigma (K,))`` from the expected photons (module docstring)."""
    components, n = ndimage.label(expected_spots >= SPOT_PIXEL_PHOTONS, structure=_IN_PANEL_8)
    if n == 0:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
    ids = np.arange(1, n + 1)
    signal = ndimage.sum(expected_spots, components, ids)
    peak = ndimage.maximum(expected_spots, components, ids)
    peak_at = np.array(ndimage.maximum_position(expected_spots, components, ids))
    centre = np.array(ndimage.center_of_mass(expected_spots, components, ids))
    centre[:, 0] = np.rint(centre[:, 0])  # a component lies on one panel
    box = ndimage.grey_dilation(components, footprint=_IN_PANEL_8)
    box = np.where(components > 0, components, box)
    n_box = ndimage.sum(np.ones_like(background), box, ids)
    b_box = ndimage.sum(background, box, ids)
    ios = signal / np.sqrt(signal + 1.25 * (b_box + n_box * read_noise**2))
    b_peak = background[tuple(peak_at.T)]
    peak_ok = (peak >= PEAK_PIXEL_MIN_PHOTONS) & (peak >= PEAK_PIXEL_SIGMAS * np.sqrt(b_peak + read_noise**2))
    local_max = (expected_spots == ndimage.maximum_filter(expected_spots, footprint=_IN_PANEL_8)) & (components > 0)
    maxima = np.bincount(components[local_max], minlength=n + 1)[1:]
    _, n_ss, n_fs = expected_spots.shape
    slices = ndimage.find_objects(box)
    on_panel = np.array([s[1].start > 0 and s[2].start > 0 and s[1].stop < n_ss and s[2].stop < n_fs for s in slices])
    centre_pixel = np.rint(centre).astype(np.int64)
    good = mask[tuple(centre_pixel.T)].astype(bool)
    strong = (ios >= STRONG_I_OVER_SIGMA) & peak_ok & good & on_panel & (maxima == 1)
    weak = ~strong & (ios >= WEAK_I_OVER_SIGMA)
    return centre[strong], centre[weak], ios[strong]


def build_frame(
    rng: np.random.Generator, geometry: DetectorGeometry, spots: np.ndarray, distance: float, wavelength_a: float
) -> PatternSimFrame:
    """A test frame from one :func:`run_pattern_sim` image."""
    adu, mask, expected_spots, background, settings = detector_frame(rng, geometry, spots, distance, wavelength_a)
    strong, weak, ios = spot_truth(expected_spots, background, mask, settings.read_noise)
    return PatternSimFrame(adu, mask, strong, weak, ios, settings)
