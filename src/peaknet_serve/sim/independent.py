"""An independent serial-crystallography (SFX) frame simulator, for judging PeakNet off its own generator.

PeakNet was trained on frames of :mod:`peaknet_serve.sim.peaksim`. This module was written separately from peaknet_serve.sim.peaksim's
frame/spot/background/detector code (it imports nothing from peaknet_serve.sim.peaksim) and makes different modelling
choices on purpose, so that scoring the model on its frames measures robustness rather than
how well the model learned one generator:

* **Detectors** (:func:`detector`): own panel layouts with rotated panels (pinwheel quadrants for
  ePix10k2M and CSPAD, 180-degree-rotated Jungfrau modules), so fast/slow axes point in all four
  lab directions; Rayonix is modelled as an MX170-HS binned 2x2 (1920 x 1920 pixels of 88.5 um).
* **Spot positions** (:func:`ewald_reflections`): a random unit cell (30-250 A, one of six lattice
  systems) in a uniformly random orientation; reflections are found by intersecting each
  reciprocal-lattice row with the Ewald sphere (wavelength 1-2 A), kept while the excitation error
  is within 3 rocking widths (domain size + mosaicity + bandwidth), and projected onto a flat
  detector 80-300 mm away. Some frames hold two lattices.
* **Spot intensities** (:func:`reflection_photons`): exponential (acentric Wilson) amplitudes times
  a Wilson B-factor falloff, a soft diffraction limit, the partiality and the polarisation factor.
* **Spot profiles** (:func:`render_spots`): Moffat or pseudo-Voigt (Gauss + 2-D Cauchy) profiles,
  not Gaussians; widths 0.55-3.5 px; round, radially streaked (bandwidth), azimuthally streaked
  (mosaicity) or randomly elongated; integrated over pixels by sub-pixel sampling.
* **Background** (:func:`background_photons`): a radial profile in q with two water maxima
  (~2.0 and ~2.9 1/A), air scatter, a sloping term and small-angle scatter, times polarisation and
  pixel solid angle; an optional liquid-jet streak; a beam stop with its support arm. Levels from
  almost empty (0.002 photons/pixel) to bright (30 photons/pixel).
* **Detector response** (:func:`detector_response`): Poisson photons, a gain of 1-60 ADU/photon
  with panel-to-panel and pixel-to-pixel variation, Gaussian read noise, a common-mode offset per
  row block of each ASIC (per row of a CCD quadrant for Rayonix) of up to 1x (ePix, CSPAD) or
  0.5x (Jungfrau, Rayonix) the read noise, panel pedestal offsets, saturation, dead and hot pixels
  (most hot ones masked, some not). Output in float32 ADU and as uint16 (offset so the background
  sits above 0).

Truth (:func:`classify_spots`, all in photons, from expected noise-free values): every reflection
that lands on a panel, with its position (panel, ss, fs) in pixel-index coordinates (the centre
of pixel ``[ss, fs]`` is at ``(ss, fs)``, as in :mod:`peaknet_serve.device.peaks`). For a spot with
major-axis width ``sigma`` (px), integrate a square box of half-size ``h = clip(ceil(2 sigma), 1, 5)``
(3x3 to 11x11 pixels, those on the panel). With ``S`` the spot's photons in the box, ``B`` the
background photons in the box, ``n`` the box pixels, ``r`` the read noise (photons) and a
background estimated from ``4 n`` surrounding pixels::

    sigma_I^2 = S + B + n r^2 + (n^2 / 4n) (B / n + r^2) = S + 1.25 (B + n r^2)
    I/sigma   = S / sigma_I

* **strong** (must be found): ``I/sigma >= 6``; its brightest pixel holds ``>= 1`` expected photon
  and stands ``>= 3`` noise sigmas ``sqrt(b + r^2)`` above its pixel's background ``b``; the centre
  pixel is good (mask 1: not dead, not a masked hot pixel, not under the beam stop, not on a panel's
  outer ring); and no brighter detectable spot lies closer than ``max(3, 1.25 (sigma_i + sigma_j))``
  px on the same panel (closer pairs blend into one blob for any peak finder).
* **weak** (detections near it count neither way): every other spot with ``I/sigma >= 2``.
* anything dimmer is invisible; a detection there is a false positive.

Everything is deterministic given the ``numpy.random.Generator`` passed to :func:`simulate`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial import cKDTree

HC_KEV_ANGSTROM = 12.398419843320026
STRONG_I_OVER_SIGMA = 6.0
WEAK_I_OVER_SIGMA = 2.0
PEAK_PIXEL_SIGMAS = 3.0
PEAK_PIXEL_MIN_PHOTONS = 1.0
BACKGROUND_REGION_FACTOR = 4.0  # background estimated from this many times the box pixels
MIN_SEPARATION_PX = 3.0
SEPARATION_PER_SIGMA = 1.25
MIN_RENDER_PHOTONS = 2.0  # reflections below this can never reach I/sigma >= 2 (I/sigma <= sqrt(N) < 1.42)
DETECTOR_NAMES = ("cspad", "epix10k2m", "jungfrau4m", "rayonix")


# ------------------------------------------------------------------------------------------------
# Detectors
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detector:
    """A flat multi-panel detector perpendicular to the beam.

    Attributes:
        name: one of :data:`DETECTOR_NAMES`.
        panel_shape: ``(ss, fs)`` pixels per panel.
        pixel_mm: pixel pitch in mm.
        origins_mm: (P, 2) float64 lab (x, y) in mm of each panel's pixel (0, 0) centre, relative to
            the nominal beam position.
        fs_dirs, ss_dirs: (P, 2) float64 unit vectors of the panel's +fs / +ss axes in the lab plane.
        asic_shape: ``(ss, fs)`` of one readout ASIC (a CCD readout quadrant for Rayonix).
        cm_rows: rows per common-mode block within an ASIC (1 = per-row line noise).
        gain_range: ADU per photon, min/max (log-uniform per frame).
        read_noise_range: read noise in photons rms, min/max.
        full_well_photons: photons per pixel where the pixel saturates (before the ADC ceiling).
        common_mode_max: largest common-mode rms as a multiple of the read noise (uncorrected ASIC
            common mode for ePix/CSPAD; small for Jungfrau and for the CCD's line noise).
    """

    name: str
    panel_shape: tuple[int, int]
    pixel_mm: float
    origins_mm: np.ndarray
    fs_dirs: np.ndarray
    ss_dirs: np.ndarray
    asic_shape: tuple[int, int]
    cm_rows: int
    gain_range: tuple[float, float]
    read_noise_range: tuple[float, float]
    full_well_photons: float
    common_mode_max: float

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """``(P, ss, fs)``."""
        return (self.origins_mm.shape[0], *self.panel_shape)


def _rotation2(degrees: float) -> np.ndarray:
    """(2, 2) float64 counter-clockwise rotation."""
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def _panel(
    corner_mm: tuple[float, float], fs_dir: tuple[float, float], ss_dir: tuple[float, float], pixel_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Panel whose rectangle starts at ``corner_mm`` (the outer corner of pixel (0, 0)).

    Returns:
        (origin of pixel (0, 0) centre, fs unit vector, ss unit vector), each (2,) float64 mm.
    """
    fs, ss = np.asarray(fs_dir, float), np.asarray(ss_dir, float)
    return np.asarray(corner_mm, float) + 0.5 * pixel_mm * (fs + ss), fs, ss


def _pinwheel(
    quad: list[tuple[np.ndarray, np.ndarray, np.ndarray]], shift_mm: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four copies of one quadrant's panels rotated by 0/90/180/270 degrees about the beam.

    ``quad`` is laid out in the first quadrant from (0, 0); ``shift_mm = (a, b)`` moves it to
    ``x >= a, y >= b``. With ``a + b > 0`` the four rotated copies do not overlap and leave a hole
    around the beam (a pinwheel).
    """
    origins, fss, sss = [], [], []
    for k in range(4):
        rot = _rotation2(90.0 * k)
        for origin, fs, ss in quad:
            origins.append(rot @ (origin + np.asarray(shift_mm)))
            fss.append(rot @ fs)
            sss.append(rot @ ss)
    return np.array(origins), np.array(fss), np.array(sss)


def _epix10k2m() -> Detector:
    """16 modules of 352 x 384 pixels (2 x 2 ASICs of 176 x 192), 100 um, four pinwheel quadrants."""
    p, h, w, gap = 0.1, 352 * 0.1, 384 * 0.1, 0.6
    quad = [_panel((c * (w + gap), r * (h + gap)), (1, 0), (0, 1), p) for r in range(2) for c in range(2)]
    origins, fs, ss = _pinwheel(quad, (1.6, -1.0))
    return Detector("epix10k2m", (352, 384), p, origins, fs, ss, (176, 192), 16, (10.0, 60.0), (0.03, 0.2), 4000.0, 1.0)


def _jungfrau4m() -> Detector:
    """8 modules of 512 x 1024 pixels (2 x 4 ASICs of 256 x 256), 75 um; two columns of four, the
    right column rotated by 180 degrees. Calibrated in keV, so the gain is the photon energy."""
    p, h, w = 0.075, 512 * 0.075, 1024 * 0.075
    row_gap, col_gap = 1.1, 2.4
    modules = []
    for r in range(4):
        y0 = -2 * h - 1.5 * row_gap + r * (h + row_gap)
        modules.append(_panel((-col_gap / 2 - w, y0), (1, 0), (0, 1), p))
        # Rotated by 180 degrees: pixel (0, 0) sits at the module's top-right corner.
        modules.append(_panel((col_gap / 2 + w, y0 + h), (-1, 0), (0, -1), p))
    origins, fs, ss = (np.array([m[i] for m in modules]) for i in range(3))
    return Detector(
        "jungfrau4m", (512, 1024), p, origins, fs, ss, (256, 256), 32, (6.0, 12.5), (0.03, 0.15), 12000.0, 0.5
    )


def _cspad() -> Detector:
    """32 two-by-one sensors of 185 x 388 pixels (2 ASICs of 185 x 194), 110 um. Each quadrant holds
    four sections of two stacked sensors; two sections have fs along x, two along y."""
    p, h, w, gap = 0.11, 185 * 0.11, 388 * 0.11, 0.45
    cell = w + 1.0
    quad = []
    for r in range(2):
        for c in range(2):
            x0, y0 = c * cell, r * cell
            for k in range(2):
                if (r + c) % 2 == 0:  # fs along +x, sensors stacked along y
                    quad.append(_panel((x0, y0 + k * (h + gap)), (1, 0), (0, 1), p))
                else:  # fs along +y, sensors stacked along x (ss points to -x)
                    quad.append(_panel((x0 + 2 * h + gap - k * (h + gap), y0), (0, 1), (-1, 0), p))
    origins, fs, ss = _pinwheel(quad, (1.2, -0.8))
    return Detector("cspad", (185, 388), p, origins, fs, ss, (185, 194), 185, (20.0, 40.0), (0.06, 0.25), 450.0, 1.0)


def _rayonix() -> Detector:
    """Rayonix MX170-HS binned 2 x 2: one 1920 x 1920 CCD image of 88.54 um pixels, four readout
    quadrants of 960 x 960 with per-row line noise."""
    p, n = 170.0 / 1920, 1920
    origins, fs, ss = (np.array([v]) for v in _panel((-n * p / 2, -n * p / 2), (1, 0), (0, 1), p))
    return Detector("rayonix", (n, n), p, origins, fs, ss, (960, 960), 1, (1.0, 8.0), (0.1, 0.5), 60000.0, 0.5)


_DETECTORS = {"epix10k2m": _epix10k2m, "jungfrau4m": _jungfrau4m, "cspad": _cspad, "rayonix": _rayonix}


def detector(name: str) -> Detector:
    """This module's own model of detector ``name`` (one of :data:`DETECTOR_NAMES`)."""
    try:
        return _DETECTORS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {list(DETECTOR_NAMES)}") from None


def pixel_xy(det: Detector, beam_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Lab (x, y) of every pixel centre in mm relative to the actual beam.

    Returns:
        ``(x, y)``, each (P, ss, fs) float64.
    """
    n_ss, n_fs = det.panel_shape
    ss = np.arange(n_ss, dtype=np.float64)[None, :, None] * det.pixel_mm
    fs = np.arange(n_fs, dtype=np.float64)[None, None, :] * det.pixel_mm
    o, f, s = det.origins_mm[:, :, None, None], det.fs_dirs[:, :, None, None], det.ss_dirs[:, :, None, None]
    x = o[:, 0] - beam_mm[0] + fs * f[:, 0] + ss * s[:, 0]
    y = o[:, 1] - beam_mm[1] + fs * f[:, 1] + ss * s[:, 1]
    return x, y


def xy_to_panel(
    det: Detector, x: np.ndarray, y: np.ndarray, beam_mm: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector-plane points (mm relative to the actual beam) -> ``(panel, ss, fs)``.

    Args:
        x, y: (N,) float64 mm.

    Returns:
        (N,) int64 panel (-1 off every panel) and (N,) float64 ss, fs (pixel centres at integers).
    """
    n_ss, n_fs = det.panel_shape
    dx = (x[None, :] + beam_mm[0] - det.origins_mm[:, 0, None]) / det.pixel_mm
    dy = (y[None, :] + beam_mm[1] - det.origins_mm[:, 1, None]) / det.pixel_mm
    fs = dx * det.fs_dirs[:, 0, None] + dy * det.fs_dirs[:, 1, None]
    ss = dx * det.ss_dirs[:, 0, None] + dy * det.ss_dirs[:, 1, None]
    inside = (fs >= -0.5) & (fs < n_fs - 0.5) & (ss >= -0.5) & (ss < n_ss - 0.5)
    panel = np.where(inside.any(axis=0), inside.argmax(axis=0), -1)
    cols = np.arange(x.shape[0])
    return panel, ss[panel.clip(0), cols], fs[panel.clip(0), cols]


# ------------------------------------------------------------------------------------------------
# Frame parameters
# ------------------------------------------------------------------------------------------------


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


@dataclass(frozen=True)
class Crystal:
    """One lattice: cell edges (A), angles (degrees), orientation (3, 3) rotation and a scale."""

    system: str
    cell: tuple[float, float, float, float, float, float]
    rotation: np.ndarray
    photons_scale: float  # mean photons of a fully recorded low-resolution reflection


@dataclass(frozen=True)
class FrameParams:
    """Everything sampled for one frame (lengths in mm unless noted)."""

    detector: str
    wavelength_a: float
    distance_mm: float
    beam_mm: tuple[float, float]
    crystals: tuple[Crystal, ...]
    wilson_b: float  # A^2
    d_limit_a: float  # soft diffraction limit, A
    mosaicity_rad: float  # half-width
    bandwidth: float  # relative rms
    domain_a: float  # mosaic block size, A
    profile: str  # "moffat" or "pvoigt"
    profile_shape: float  # Moffat beta or pseudo-Voigt Cauchy fraction
    width_px: float  # typical minor-axis sigma-equivalent width
    streak: str  # "round", "radial", "azimuthal", "random"
    elongation: float  # maximal major/minor ratio - 1
    background_level: float  # photons/pixel at the profile's maximum
    background_weights: tuple[float, float, float, float]  # water, air, slope, small-angle
    water_q: tuple[float, float, float, float, float]  # q1, w1, q2, w2, amp2 (1/A)
    air_q: float
    slope_q: float
    sas_q: float
    jet: tuple[float, float, float, float] | None  # angle rad, amplitude, width mm, decay mm
    beamstop: tuple[float, float, float, float]  # radius mm, arm angle rad, arm width mm, transmission
    gain: float  # ADU/photon
    panel_gain_rms: float
    pixel_gain_rms: float
    read_noise: float  # photons
    common_mode: float  # photons rms per block
    panel_offset: float  # photons rms per panel
    dead_fraction: float
    hot_fraction: float
    hot_masked_fraction: float

    @property
    def photon_kev(self) -> float:
        return HC_KEV_ANGSTROM / self.wavelength_a

    def as_dict(self) -> dict:
        """JSON-friendly summary."""
        d = asdict(self)
        d["crystals"] = [
            {"system": c.system, "cell": list(c.cell), "photons_scale": c.photons_scale} for c in self.crystals
        ]
        return d


def _random_cell(rng: np.random.Generator, max_edge: float) -> tuple[str, tuple[float, ...]]:
    """A random lattice system and cell (edges log-uniform in 30-``max_edge`` A, angles degrees)."""
    system = str(
        rng.choice(
            ["triclinic", "monoclinic", "orthorhombic", "tetragonal", "hexagonal", "cubic"],
            p=[0.08, 0.27, 0.3, 0.15, 0.12, 0.08],
        )
    )
    a, b, c = (_log_uniform(rng, 30.0, max_edge) for _ in range(3))
    alpha = beta = gamma = 90.0
    if system == "triclinic":
        alpha, beta, gamma = rng.uniform(75.0, 105.0, size=3)
    elif system == "monoclinic":
        beta = rng.uniform(92.0, 120.0)
    elif system == "tetragonal":
        b = a
    elif system == "hexagonal":
        b, gamma = a, 120.0
    elif system == "cubic":
        b = c = a
    return system, (a, b, c, float(alpha), float(beta), float(gamma))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random (3, 3) float64 rotation matrix (from a normalised Gaussian quaternion)."""
    w, x, y, z = rng.normal(size=4)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def sample_params(det: Detector, rng: np.random.Generator) -> FrameParams:
    """Draw one frame's experiment, crystal, background and detector settings."""
    wavelength = rng.uniform(1.0, 2.0)
    # Spots of a cell edge a are ~ distance * wavelength / (a * pixel) pixels apart; an experimenter
    # keeps that >= ~5 px: the distance is drawn in [max(80, needed), 300] mm and, when even 300 mm
    # is not enough, the cell is capped.
    min_spacing_px = rng.uniform(5.0, 8.0)
    distance = rng.uniform(80.0, 300.0)
    max_edge = min(250.0, 300.0 * wavelength / (min_spacing_px * det.pixel_mm))
    system, cell = _random_cell(rng, max_edge)
    needed = min_spacing_px * det.pixel_mm * max(cell[:3]) / wavelength
    if needed > distance:
        distance = rng.uniform(needed, max(needed, 300.0))
    photons_scale = _log_uniform(rng, 15.0, 20000.0)
    crystals = [Crystal(system, cell, random_rotation(rng), photons_scale)]
    if rng.random() < 0.2:  # a second lattice of the same crystal form in the beam
        crystals.append(Crystal(system, cell, random_rotation(rng), photons_scale * _log_uniform(rng, 0.1, 1.0)))
    profile = "moffat" if rng.random() < 0.5 else "pvoigt"
    profile_shape = rng.uniform(1.6, 4.5) if profile == "moffat" else rng.uniform(0.05, 0.6)
    streak = str(rng.choice(["round", "radial", "azimuthal", "random"], p=[0.3, 0.3, 0.2, 0.2]))
    weights = rng.dirichlet([1.0, 1.0, 1.0, 0.5])
    water = (
        rng.uniform(1.85, 2.1),
        rng.uniform(0.25, 0.4),
        rng.uniform(2.75, 3.1),
        rng.uniform(0.3, 0.5),
        rng.uniform(0.3, 0.7),
    )
    jet = None
    if rng.random() < 0.4:
        jet = (rng.uniform(0.0, math.pi), rng.uniform(0.3, 3.0), rng.uniform(0.2, 0.8), rng.uniform(5.0, 40.0))
    beamstop = (rng.uniform(1.0, 3.0), rng.uniform(0.0, 2 * math.pi), rng.uniform(0.5, 1.5), 0.02)
    gain = _log_uniform(rng, *det.gain_range)
    if det.name == "jungfrau4m":
        gain = HC_KEV_ANGSTROM / wavelength  # 1 ADU = 1 keV
    read_noise = _log_uniform(rng, *det.read_noise_range)
    return FrameParams(
        detector=det.name,
        wavelength_a=wavelength,
        distance_mm=distance,
        beam_mm=(rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)),
        crystals=tuple(crystals),
        wilson_b=rng.uniform(5.0, 60.0),
        d_limit_a=_log_uniform(rng, 1.5, 5.0),
        mosaicity_rad=math.radians(_log_uniform(rng, 0.02, 0.3)),
        bandwidth=_log_uniform(rng, 5e-4, 4e-3),
        domain_a=_log_uniform(rng, 3000.0, 30000.0),
        profile=profile,
        profile_shape=float(profile_shape),
        width_px=_log_uniform(rng, 0.6, 1.8),
        streak=streak,
        elongation=rng.uniform(0.3, 2.5),
        background_level=_log_uniform(rng, 0.002, 30.0),
        background_weights=tuple(float(v) for v in weights),
        water_q=tuple(float(v) for v in water),
        air_q=rng.uniform(0.3, 2.0),
        slope_q=rng.uniform(2.0, 6.0),
        sas_q=rng.uniform(0.05, 0.3),
        jet=jet,
        beamstop=beamstop,
        gain=gain,
        panel_gain_rms=rng.uniform(0.0, 0.06),
        pixel_gain_rms=rng.uniform(0.005, 0.03),
        read_noise=read_noise,
        common_mode=rng.uniform(0.0, det.common_mode_max) * read_noise,
        panel_offset=rng.uniform(0.0, 0.4),
        dead_fraction=_log_uniform(rng, 1e-5, 1e-3),
        hot_fraction=_log_uniform(rng, 1e-6, 2e-5),
        hot_masked_fraction=0.8,
    )


# ------------------------------------------------------------------------------------------------
# Lattice and Ewald sphere
# ------------------------------------------------------------------------------------------------


def real_space_matrix(cell: tuple[float, ...]) -> np.ndarray:
    """(3, 3) float64 rows a, b, c (A) of a cell with a along x and b in the xy plane."""
    a, b, c, al, be, ga = cell
    al, be, ga = (math.radians(v) for v in (al, be, ga))
    cx = c * math.cos(be)
    cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
    cz = math.sqrt(max(c * c - cx * cx - cy * cy, 1e-9))
    return np.array([[a, 0.0, 0.0], [b * math.cos(ga), b * math.sin(ga), 0.0], [cx, cy, cz]])


def rocking_width(g: np.ndarray, params: FrameParams) -> np.ndarray:
    """Rocking-curve rms width (1/A) of reflections at ``|g| = g`` (1/A): domain size + mosaic spread
    + the wavelength spread's smearing of the sphere."""
    return 1.0 / params.domain_a + params.mosaicity_rad * g + 0.5 * params.bandwidth * params.wavelength_a * g * g


def ewald_reflections(
    crystal: Crystal, params: FrameParams, s_max: float, max_window: int = 12
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reflections of ``crystal`` near the Ewald sphere, up to ``|g| <= s_max`` (1/A).

    For every pair of indices on the two reciprocal axes least parallel to the beam, the lattice row
    along the third axis is intersected with the sphere ``|g + k0| = 1/lambda`` (a quadratic in the
    third index); integer indices within 3 rocking widths of each crossing are kept.

    Returns:
        ``(hkl, g, excitation)``: (N, 3) int64 Miller indices, (N, 3) float64 lab reciprocal
        vectors (1/A), (N,) float64 signed excitation errors ``|g + k0| - 1/lambda`` (1/A).
    """
    real = real_space_matrix(crystal.cell) @ crystal.rotation.T
    recip = np.linalg.inv(real).T  # rows a*, b*, c* (lab frame)
    k = 1.0 / params.wavelength_a
    k0 = np.array([0.0, 0.0, k])
    along_beam = np.abs(recip[:, 2]) / np.linalg.norm(recip, axis=1)
    il = int(np.argmax(along_beam))
    ih, ik = [i for i in range(3) if i != il]
    limits = np.floor(s_max * np.linalg.norm(real, axis=1)).astype(np.int64)
    hh, kk = np.meshgrid(np.arange(-limits[ih], limits[ih] + 1), np.arange(-limits[ik], limits[ik] + 1), indexing="ij")
    hh, kk = hh.ravel(), kk.ravel()
    u = hh[:, None] * recip[ih] + kk[:, None] * recip[ik]  # (M, 3)
    v = recip[il]
    qa = v @ v
    qb = 2.0 * ((u + k0) @ v)
    qc = np.einsum("ij,ij->i", u, u) + 2.0 * k * u[:, 2]
    disc = qb * qb - 4.0 * qa * qc
    ok = disc >= 0
    hh, kk, u, qb, sq = hh[ok], kk[ok], u[ok], qb[ok], np.sqrt(disc[ok])
    empty = (np.zeros((0, 3), np.int64), np.zeros((0, 3)), np.zeros(0))
    if len(hh) == 0:
        return empty
    w_max = rocking_width(np.array(s_max), params)
    rows = []
    for sign in (-1.0, 1.0):
        root = (-qb + sign * sq) / (2.0 * qa)
        normal = (u + root[:, None] * v + k0) * params.wavelength_a  # unit normal of the sphere there
        slope = np.abs(normal @ v)  # d(excitation)/d(index)
        half = np.minimum(np.ceil(3.0 * w_max / np.maximum(slope, 1e-12)), max_window).astype(np.int64)
        window = int(half.max()) if len(half) else 0
        offsets = np.arange(-window, window + 2)
        ll = np.floor(root)[:, None].astype(np.int64) + offsets[None, :]
        keep = np.abs(ll - root[:, None]) <= half[:, None] + 1
        rows.append(
            np.stack(
                [np.broadcast_to(hh[:, None], ll.shape)[keep], np.broadcast_to(kk[:, None], ll.shape)[keep], ll[keep]],
                axis=1,
            )
        )
    idx = np.unique(np.concatenate(rows), axis=0)
    hkl = np.zeros_like(idx)
    hkl[:, ih], hkl[:, ik], hkl[:, il] = idx[:, 0], idx[:, 1], idx[:, 2]
    g = hkl @ recip
    g_len = np.linalg.norm(g, axis=1)
    excitation = np.linalg.norm(g + k0, axis=1) - k
    keep = (g_len > 0) & (g_len <= s_max) & (np.abs(excitation) <= 3.0 * rocking_width(g_len, params))
    return hkl[keep], g[keep], excitation[keep]


def reflection_photons(
    rng: np.random.Generator, crystal: Crystal, g: np.ndarray, excitation: np.ndarray, params: FrameParams
) -> np.ndarray:
    """Expected photons of each reflection (N,) float64: Wilson-exponential amplitude x B-factor
    falloff x soft diffraction limit x partiality x polarisation (beam polarised along x)."""
    s = np.linalg.norm(g, axis=1)
    wilson = rng.exponential(1.0, size=len(s))
    falloff = np.exp(-0.5 * params.wilson_b * s * s) / (1.0 + (s * params.d_limit_a) ** 8)
    partiality = np.exp(-0.5 * (excitation / rocking_width(s, params)) ** 2)
    kout = g + np.array([0.0, 0.0, 1.0 / params.wavelength_a])
    kout /= np.linalg.norm(kout, axis=1, keepdims=True)
    polarisation = 1.0 - kout[:, 0] ** 2
    return crystal.photons_scale * wilson * falloff * partiality * polarisation


# ------------------------------------------------------------------------------------------------
# Spots
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spots:
    """Reflections on the detector, each array (S,).

    Attributes:
        panel: int64; ss, fs: float64 centre in pixel-index coordinates.
        photons: float64 expected photons before the beam stop.
        sigma_major, sigma_minor: float64 sigma-equivalent widths (FWHM / 2.355) in px.
        dir_ss, dir_fs: float64 unit vector of the major axis in panel coordinates.
        hkl: (S, 3) int64; lattice: int64 index of the crystal; d_a: float64 resolution (A).
    """

    panel: np.ndarray
    ss: np.ndarray
    fs: np.ndarray
    photons: np.ndarray
    sigma_major: np.ndarray
    sigma_minor: np.ndarray
    dir_ss: np.ndarray
    dir_fs: np.ndarray
    hkl: np.ndarray
    lattice: np.ndarray
    d_a: np.ndarray


def detector_s_max(det: Detector, params: FrameParams) -> float:
    """Largest |g| = 2 sin(theta) / lambda (1/A) that reaches any pixel centre."""
    corners = []
    n_ss, n_fs = det.panel_shape
    for ss in (0, n_ss - 1):
        for fs in (0, n_fs - 1):
            corners.append(det.origins_mm + det.pixel_mm * (ss * det.ss_dirs + fs * det.fs_dirs))
    xy = np.concatenate(corners) - np.asarray(params.beam_mm)
    r = np.hypot(xy[:, 0], xy[:, 1]).max()
    two_theta = math.atan2(r, params.distance_mm)
    return 2.0 * math.sin(two_theta / 2.0) / params.wavelength_a


def lattice_spots(det: Detector, params: FrameParams, rng: np.random.Generator) -> Spots:
    """All reflections of the frame's crystals that hit a panel with >= :data:`MIN_RENDER_PHOTONS`."""
    s_max = min(detector_s_max(det, params), 1.4 / params.d_limit_a)
    parts = []
    for index, crystal in enumerate(params.crystals):
        hkl, g, excitation = ewald_reflections(crystal, params, s_max)
        photons = reflection_photons(rng, crystal, g, excitation, params)
        kout = g + np.array([0.0, 0.0, 1.0 / params.wavelength_a])
        forward = kout[:, 2] > 1e-6
        x = params.distance_mm * kout[:, 0] / np.where(forward, kout[:, 2], 1.0)
        y = params.distance_mm * kout[:, 1] / np.where(forward, kout[:, 2], 1.0)
        panel, ss, fs = xy_to_panel(det, x, y, params.beam_mm)
        keep = forward & (panel >= 0) & (photons >= MIN_RENDER_PHOTONS)
        parts.append(
            (
                panel[keep],
                ss[keep],
                fs[keep],
                photons[keep],
                hkl[keep],
                np.full(keep.sum(), index),
                1.0 / np.linalg.norm(g[keep], axis=1),
                x[keep],
                y[keep],
            )
        )
    panel, ss, fs, photons, hkl, lattice, d_a, x, y = (np.concatenate([p[i] for p in parts]) for i in range(9))
    n = len(panel)
    minor = np.clip(params.width_px * np.exp(rng.normal(0.0, 0.12, n)), 0.55, 3.0)
    r = np.hypot(x, y)
    radial = np.stack([x, y], axis=1) / np.maximum(r, 1e-9)[:, None]
    if params.streak == "round":
        ratio = 1.0 + 0.15 * rng.random(n)
        lab_dir = radial
    elif params.streak == "radial":  # bandwidth smear grows with the scattering angle
        ratio = 1.0 + params.elongation * (r / max(r.max(initial=1.0), 1e-9)) * rng.uniform(0.7, 1.0, n)
        lab_dir = radial
    elif params.streak == "azimuthal":  # mosaic smear: along the ring
        ratio = 1.0 + params.elongation * rng.uniform(0.4, 1.0, n)
        lab_dir = np.stack([-radial[:, 1], radial[:, 0]], axis=1)
    else:
        ratio = 1.0 + params.elongation * rng.random(n)
        angle = rng.uniform(0.0, math.pi, n)
        lab_dir = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    major = np.clip(minor * ratio, minor, 3.5)
    dir_ss = np.einsum("ij,ij->i", lab_dir, det.ss_dirs[panel])
    dir_fs = np.einsum("ij,ij->i", lab_dir, det.fs_dirs[panel])
    return Spots(
        panel.astype(np.int64),
        ss,
        fs,
        photons,
        major,
        minor,
        dir_ss,
        dir_fs,
        hkl.astype(np.int64),
        lattice.astype(np.int64),
        d_a,
    )


def profile_density(
    du: np.ndarray, dv: np.ndarray, sigma_u: np.ndarray, sigma_v: np.ndarray, kind: str, shape: float
) -> np.ndarray:
    """Normalised 2-D spot density (per px^2) at offsets ``du`` (major axis), ``dv`` (minor axis).

    ``kind="moffat"``: ``(beta - 1) / (pi a_u a_v) (1 + (u/a_u)^2 + (v/a_v)^2)^-beta`` with
    ``beta = shape`` and ``a`` chosen so the FWHM equals ``2.355 sigma``.
    ``kind="pvoigt"``: ``(1 - eta) Gauss(sigma) + eta Cauchy`` (the 2-D Cauchy, a Moffat with
    beta = 1.5, of the same FWHM), ``eta = shape``.
    """
    half = math.sqrt(2.0 * math.log(2.0))  # FWHM / (2 sigma)
    if kind == "moffat":
        beta = shape
        scale = half / math.sqrt(2.0 ** (1.0 / beta) - 1.0)
        au, av = sigma_u * scale, sigma_v * scale
        return (beta - 1.0) / (math.pi * au * av) * (1.0 + (du / au) ** 2 + (dv / av) ** 2) ** (-beta)
    eta = shape
    gauss = np.exp(-0.5 * ((du / sigma_u) ** 2 + (dv / sigma_v) ** 2)) / (2.0 * math.pi * sigma_u * sigma_v)
    scale = half / math.sqrt(2.0 ** (2.0 / 3.0) - 1.0)
    gu, gv = sigma_u * scale, sigma_v * scale
    cauchy = (1.0 + (du / gu) ** 2 + (dv / gv) ** 2) ** -1.5 / (2.0 * math.pi * gu * gv)
    return (1.0 - eta) * gauss + eta * cauchy


@dataclass(frozen=True)
class RenderedSpots:
    """Expected spot photons per pixel and per-spot sums for the truth.

    Attributes:
        image: (P, ss, fs) float64 expected spot photons (after the beam stop).
        box_photons: (S,) float64 spot photons inside its integration box (on the panel).
        box_background: (S,) float64 background photons inside the box.
        box_pixels: (S,) int64 pixels in the box on the panel.
        peak_photons: (S,) float64 the spot's photons in its brightest pixel.
        peak_background: (S,) float64 background photons in that pixel.
    """

    image: np.ndarray
    box_photons: np.ndarray
    box_background: np.ndarray
    box_pixels: np.ndarray
    peak_photons: np.ndarray
    peak_background: np.ndarray


def integration_half_size(sigma_major: np.ndarray) -> np.ndarray:
    """(S,) int64 half-size ``h`` of the square integration box (2h+1 px a side): clip(ceil(2 sigma), 1, 5)."""
    return np.clip(np.ceil(2.0 * sigma_major), 1, 5).astype(np.int64)


def render_spots(
    spots: Spots,
    params: FrameParams,
    shape: tuple[int, int, int],
    background: np.ndarray,
    transmission: np.ndarray,
    chunk: int = 1024,
) -> RenderedSpots:
    """Integrate every spot's profile over pixels and add them up.

    Each spot occupies a (2R+1)^2 box, ``R = clip(ceil(3.5 sigma_major), 3, 12)``; the density is
    averaged over ``k x k`` sub-pixel samples (``k = clip(ceil(2 / sigma_minor), 2, 4)``) and the box
    normalised to the spot's photons (light leaving the panel is lost). The beam stop transmission
    multiplies the result.

    Args:
        background: (P, ss, fs) float32 expected background photons (after the beam stop).
        transmission: (P, ss, fs) float32 beam-stop transmission.
    """
    n_panels, n_ss, n_fs = shape
    n = len(spots.panel)
    flat = np.zeros(n_panels * n_ss * n_fs)
    box_photons, box_background = np.zeros(n), np.zeros(n)
    box_pixels = np.zeros(n, np.int64)
    peak_photons, peak_background = np.zeros(n), np.zeros(n)
    reach = np.clip(np.ceil(3.5 * spots.sigma_major), 3, 12).astype(np.int64)
    sub = np.clip(np.ceil(2.0 / spots.sigma_minor), 2, 4).astype(np.int64)
    half = integration_half_size(spots.sigma_major)
    bg_flat, tr_flat = background.reshape(-1), transmission.reshape(-1)
    for key in np.unique(reach * 8 + sub):
        r, k = int(key // 8), int(key % 8)
        grid = np.arange(-r, r + 1)
        o = (np.arange(k) + 0.5) / k - 0.5
        members = np.flatnonzero(reach * 8 + sub == key)
        for start in range(0, len(members), chunk):
            sel = members[start : start + chunk]
            c_ss, c_fs = np.rint(spots.ss[sel]).astype(np.int64), np.rint(spots.fs[sel]).astype(np.int64)
            pix_ss = c_ss[:, None, None] + grid[None, :, None]  # (m, B, 1)
            pix_fs = c_fs[:, None, None] + grid[None, None, :]  # (m, 1, B)
            d_ss = (pix_ss - spots.ss[sel, None, None])[..., None, None] + o[:, None]
            d_fs = (pix_fs - spots.fs[sel, None, None])[..., None, None] + o[None, :]
            a_ss, a_fs = spots.dir_ss[sel, None, None, None, None], spots.dir_fs[sel, None, None, None, None]
            du = d_ss * a_ss + d_fs * a_fs
            dv = -d_ss * a_fs + d_fs * a_ss
            dens = profile_density(
                du,
                dv,
                spots.sigma_major[sel, None, None, None, None],
                spots.sigma_minor[sel, None, None, None, None],
                params.profile,
                params.profile_shape,
            ).mean(axis=(-2, -1))  # (m, B, B)
            dens /= dens.sum(axis=(1, 2), keepdims=True)
            on = (pix_ss >= 0) & (pix_ss < n_ss) & (pix_fs >= 0) & (pix_fs < n_fs)  # (m, B, B)
            index = (spots.panel[sel, None, None] * n_ss + pix_ss.clip(0, n_ss - 1)) * n_fs + pix_fs.clip(0, n_fs - 1)
            values = np.where(on, dens * spots.photons[sel, None, None] * tr_flat[index], 0.0)
            flat += np.bincount(index[on], weights=values[on], minlength=flat.size)
            bg = np.where(on, bg_flat[index], 0.0)
            inbox = (
                on
                & (np.abs(grid)[None, :, None] <= half[sel, None, None])
                & (np.abs(grid)[None, None, :] <= half[sel, None, None])
            )
            box_photons[sel] = np.where(inbox, values, 0.0).sum(axis=(1, 2))
            box_background[sel] = np.where(inbox, bg, 0.0).sum(axis=(1, 2))
            box_pixels[sel] = inbox.sum(axis=(1, 2))
            brightest = values.reshape(len(sel), -1).argmax(axis=1)
            peak_photons[sel] = values.reshape(len(sel), -1)[np.arange(len(sel)), brightest]
            peak_background[sel] = bg.reshape(len(sel), -1)[np.arange(len(sel)), brightest]
    return RenderedSpots(flat.reshape(shape), box_photons, box_background, box_pixels, peak_photons, peak_background)


# ------------------------------------------------------------------------------------------------
# Background
# ------------------------------------------------------------------------------------------------


def background_photons(x: np.ndarray, y: np.ndarray, params: FrameParams) -> np.ndarray:
    """Expected background photons per pixel (before the beam stop).

    A radial profile in ``q = 4 pi sin(theta) / lambda`` (1/A): two water maxima (Gaussians at q1, q2),
    air scatter ``exp(-q / q_air)``, a sloping term ``max(0, 1 - q / q_slope)`` and small-angle
    scatter ``1 / (1 + (q / q_sas)^2)``, mixed by ``background_weights``, times the polarisation
    ``1 - x^2 / (r^2 + D^2)`` and the pixel solid angle ``cos^3(2 theta)``; scaled so its maximum on
    the detector is ``background_level``. An optional liquid-jet streak (a line through the beam,
    Gaussian across, decaying along) is added.

    Args:
        x, y: (P, ss, fs) float64 mm relative to the beam.

    Returns:
        (P, ss, fs) float32 photons.
    """
    d = params.distance_mm
    r2 = x * x + y * y
    cos2t = d / np.sqrt(r2 + d * d)
    q = 4.0 * math.pi * np.sqrt(0.5 * (1.0 - cos2t)) / params.wavelength_a
    q1, w1, q2, w2, a2 = params.water_q
    ww, wa, wsl, wsas = params.background_weights
    profile = (
        ww * (np.exp(-0.5 * ((q - q1) / w1) ** 2) + a2 * np.exp(-0.5 * ((q - q2) / w2) ** 2))
        + wa * np.exp(-q / params.air_q)
        + wsl * np.clip(1.0 - q / params.slope_q, 0.0, None)
        + wsas / (1.0 + (q / params.sas_q) ** 2)
    )
    profile *= (1.0 - x * x / (r2 + d * d)) * cos2t**3
    bg = profile * (params.background_level / max(float(profile.max()), 1e-12))
    if params.jet is not None:
        angle, amplitude, width, decay = params.jet
        across = -math.sin(angle) * x + math.cos(angle) * y
        along = np.abs(math.cos(angle) * x + math.sin(angle) * y)
        bg += params.background_level * amplitude * np.exp(-0.5 * (across / width) ** 2) / (1.0 + along / decay)
    return bg.astype(np.float32)


def beamstop_transmission(x: np.ndarray, y: np.ndarray, params: FrameParams) -> np.ndarray:
    """(P, ss, fs) float32: the beam stop's transmission (a disc on the beam and its support arm)."""
    radius, arm_angle, arm_width, t = params.beamstop
    along = math.cos(arm_angle) * x + math.sin(arm_angle) * y
    across = -math.sin(arm_angle) * x + math.cos(arm_angle) * y
    shadow = (x * x + y * y < radius * radius) | ((along > 0) & (np.abs(across) < arm_width / 2))
    return np.where(shadow, np.float32(t), np.float32(1.0))


# ------------------------------------------------------------------------------------------------
# Detector response
# ------------------------------------------------------------------------------------------------


def saturation_adu(det: Detector, params: FrameParams, offset: int) -> float:
    """Float ADU above which pixels are clipped: the full well or the uint16 ceiling, the lower."""
    return float(min(det.full_well_photons * params.gain, 65535 - offset - 1))


def uint16_offset(params: FrameParams) -> int:
    """ADU added before the uint16 cast: 6 sigma of the electronic noise (read noise, common mode,
    panel offsets) plus 8, so the background sits above zero."""
    noise = math.sqrt(params.read_noise**2 + params.common_mode**2 + params.panel_offset**2)
    return math.ceil(6.0 * noise * params.gain) + 8


def detector_response(
    rng: np.random.Generator, det: Detector, params: FrameParams, expected: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photons -> calibrated ADU.

    ``adu = poisson(expected) * gain_pixel + N(0, read_noise * gain) + common_mode + panel_offset``,
    clipped at :func:`saturation_adu`; dead pixels read 0, hot pixels a large random value.

    Args:
        expected: (P, ss, fs) float64 expected photons.

    Returns:
        ``(adu, dead, hot)``: (P, ss, fs) float32 ADU and bool maps of dead / hot pixels.
    """
    shape = expected.shape
    n_panels, n_ss, n_fs = shape
    g = params.gain
    panel_gain = g * np.clip(1.0 + params.panel_gain_rms * rng.standard_normal(n_panels), 0.8, 1.2)
    pixel_gain = panel_gain[:, None, None] * (
        1.0 + params.pixel_gain_rms * rng.standard_normal(shape, dtype=np.float32)
    )
    photons = rng.poisson(expected).astype(np.float32)
    adu = photons * pixel_gain.astype(np.float32)
    adu += rng.standard_normal(shape, dtype=np.float32) * np.float32(params.read_noise * g)
    _, a_fs = det.asic_shape
    blocks = rng.standard_normal((n_panels, n_ss // det.cm_rows, n_fs // a_fs)).astype(np.float32)
    cm = np.repeat(np.repeat(blocks * np.float32(params.common_mode * g), det.cm_rows, axis=1), a_fs, axis=2)
    adu += cm
    adu += (rng.standard_normal(n_panels) * params.panel_offset * g).astype(np.float32)[:, None, None]
    np.minimum(adu, np.float32(saturation_adu(det, params, uint16_offset(params))), out=adu)
    size = adu.size
    dead = np.zeros(size, dtype=bool)
    dead[rng.choice(size, size=rng.binomial(size, params.dead_fraction), replace=False)] = True
    hot = np.zeros(size, dtype=bool)
    hot_index = rng.choice(size, size=rng.binomial(size, params.hot_fraction), replace=False)
    hot[hot_index] = True
    flat = adu.reshape(-1)
    flat[hot_index] = np.minimum(
        rng.uniform(5.0, 300.0, len(hot_index)) * g, saturation_adu(det, params, uint16_offset(params))
    )
    flat[dead] = 0.0
    return adu, dead.reshape(shape), hot.reshape(shape)


def to_uint16(adu: np.ndarray, offset: int) -> np.ndarray:
    """(P, ss, fs) uint16 ``clip(rint(adu + offset), 0, 65535)``."""
    return np.clip(np.rint(adu + np.float32(offset)), 0, 65535).astype(np.uint16)


# ------------------------------------------------------------------------------------------------
# Truth
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpotTruth:
    """Per-spot truth, each (S,) (see the module docstring for the rule).

    Attributes:
        panel: int64; ss, fs: float64 centre (pixel centres at integers).
        photons: float64 expected photons of the reflection before the beam stop.
        box_photons, box_background: float64 expected spot / background photons in its integration
            box (after the beam stop); box_pixels: int64 pixels of the box on the panel.
        i_over_sigma: float64 expected integrated I/sigma in the box.
        peak_photons: float64 expected photons in the brightest pixel; peak_noise: its noise
            ``sqrt(b + r^2)`` (photons).
        sigma_major, sigma_minor: float64 px.
        hkl: (S, 3) int64; lattice: int64; d_a: float64 resolution (A).
        strong, weak: bool, disjoint.
    """

    panel: np.ndarray
    ss: np.ndarray
    fs: np.ndarray
    photons: np.ndarray
    box_photons: np.ndarray
    box_background: np.ndarray
    box_pixels: np.ndarray
    i_over_sigma: np.ndarray
    peak_photons: np.ndarray
    peak_noise: np.ndarray
    sigma_major: np.ndarray
    sigma_minor: np.ndarray
    hkl: np.ndarray
    lattice: np.ndarray
    d_a: np.ndarray
    strong: np.ndarray
    weak: np.ndarray

    def points(self, which: np.ndarray | None = None) -> np.ndarray:
        """(K, 3) float64 rows (panel, ss, fs) of the selected spots (all when ``which`` is None)."""
        which = slice(None) if which is None else which
        return np.stack([self.panel[which], self.ss[which], self.fs[which]], axis=1).astype(np.float64)


def integrated_i_over_sigma(
    box_photons: np.ndarray, box_background: np.ndarray, box_pixels: np.ndarray, read_noise: float
) -> np.ndarray:
    """``S / sqrt(S + (1 + 1/4) (B + n r^2))``: box sum with Poisson + read noise, background estimated
    from 4x as many pixels (all (S,) float64, photons)."""
    extra = 1.0 + 1.0 / BACKGROUND_REGION_FACTOR
    variance = box_photons + extra * (box_background + box_pixels * read_noise**2)
    return box_photons / np.sqrt(np.maximum(variance, 1e-12))


def unresolved(spots: Spots, brightness: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(S,) bool: a brighter visible spot lies closer than ``max(3, 1.25 (sigma_i + sigma_j))`` px on
    the same panel."""
    out = np.zeros(len(spots.panel), dtype=bool)
    idx = np.flatnonzero(visible)
    if len(idx) < 2:
        return out
    # Panels far apart in a synthetic coordinate so neighbours never cross panels.
    pts = np.stack([spots.panel[idx] * 1e5 + spots.ss[idx], spots.fs[idx]], axis=1)
    tree = cKDTree(pts)
    reach = max(MIN_SEPARATION_PX, SEPARATION_PER_SIGMA * 2.0 * float(spots.sigma_major.max()))
    for i, j in tree.query_pairs(reach, output_type="ndarray"):
        a, b = idx[i], idx[j]
        sep = max(MIN_SEPARATION_PX, SEPARATION_PER_SIGMA * (spots.sigma_major[a] + spots.sigma_major[b]))
        if math.hypot(spots.ss[a] - spots.ss[b], spots.fs[a] - spots.fs[b]) < sep:
            out[a if brightness[a] < brightness[b] else b] = True
    return out


def classify_spots(spots: Spots, rendered: RenderedSpots, mask: np.ndarray, read_noise: float) -> SpotTruth:
    """Strong / weak truth (module docstring)."""
    ios = integrated_i_over_sigma(rendered.box_photons, rendered.box_background, rendered.box_pixels, read_noise)
    peak_noise = np.sqrt(rendered.peak_background + read_noise**2)
    peak_ok = (rendered.peak_photons >= PEAK_PIXEL_MIN_PHOTONS) & (
        rendered.peak_photons >= PEAK_PIXEL_SIGMAS * peak_noise
    )
    _, n_ss, n_fs = mask.shape
    c_ss = np.clip(np.rint(spots.ss).astype(np.int64), 0, n_ss - 1)
    c_fs = np.clip(np.rint(spots.fs).astype(np.int64), 0, n_fs - 1)
    centre_good = mask[spots.panel, c_ss, c_fs].astype(bool)
    visible = ios >= WEAK_I_OVER_SIGMA
    blended = unresolved(spots, rendered.box_photons, visible)
    strong = (ios >= STRONG_I_OVER_SIGMA) & peak_ok & centre_good & ~blended
    weak = visible & ~strong
    return SpotTruth(
        spots.panel,
        spots.ss,
        spots.fs,
        spots.photons,
        rendered.box_photons,
        rendered.box_background,
        rendered.box_pixels,
        ios,
        rendered.peak_photons,
        peak_noise,
        spots.sigma_major,
        spots.sigma_minor,
        spots.hkl,
        spots.lattice,
        spots.d_a,
        strong,
        weak,
    )


# ------------------------------------------------------------------------------------------------
# Frame
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndependentFrame:
    """One simulated frame.

    Attributes:
        adu: (P, ss, fs) float32 calibrated ADU (background ~0 ADU plus signal).
        uint16: (P, ss, fs) uint16 ``clip(rint(adu + offset), 0, 65535)``.
        offset: int ADU added for :attr:`uint16`.
        mask: (P, ss, fs) uint8, 1 = good pixel.
        hot_pixels: (K, 3) int64 (panel, ss, fs) of every hot pixel, masked or not.
        truth: per-spot truth.
        params: what produced the frame.
    """

    adu: np.ndarray
    uint16: np.ndarray
    offset: int
    mask: np.ndarray
    hot_pixels: np.ndarray
    truth: SpotTruth
    params: FrameParams

    @property
    def strong_points(self) -> np.ndarray:
        """(K, 3) float64 (panel, ss, fs) of the strong spots."""
        return self.truth.points(self.truth.strong)

    @property
    def weak_points(self) -> np.ndarray:
        """(K, 3) float64 (panel, ss, fs) of the weak spots."""
        return self.truth.points(self.truth.weak)


def panel_ring(shape: tuple[int, int, int]) -> np.ndarray:
    """(P, ss, fs) bool, True on each panel's outermost pixel ring."""
    ring = np.zeros(shape[1:], dtype=bool)
    ring[[0, -1], :] = True
    ring[:, [0, -1]] = True
    return np.broadcast_to(ring, shape)


def simulate(geometry_name: str, rng: np.random.Generator, params: FrameParams | None = None) -> IndependentFrame:
    """Simulate one frame of detector ``geometry_name`` (one of :data:`DETECTOR_NAMES`).

    Deterministic given ``rng``'s state. ``params`` are drawn from ``rng`` unless given (e.g. a
    :func:`dataclasses.replace` of drawn ones). See the module docstring for the model and the
    truth rule.
    """
    det = detector(geometry_name)
    if params is None:
        params = sample_params(det, rng)
    shape = det.frame_shape
    x, y = pixel_xy(det, params.beam_mm)
    transmission = beamstop_transmission(x, y, params)
    background = background_photons(x, y, params) * transmission
    del x, y
    spots = lattice_spots(det, params, rng)
    rendered = render_spots(spots, params, shape, background, transmission)
    expected = rendered.image
    expected += background
    adu, dead, hot = detector_response(rng, det, params, expected)
    del expected
    masked_hot = np.zeros(shape, dtype=bool)
    hot_index = np.flatnonzero(hot)
    masked_hot.reshape(-1)[hot_index[rng.random(len(hot_index)) < params.hot_masked_fraction]] = True
    bad = dead | masked_hot | (transmission < 0.5) | panel_ring(shape)
    mask = (~bad).astype(np.uint8)
    truth = classify_spots(spots, rendered, mask, params.read_noise)
    offset = uint16_offset(params)
    return IndependentFrame(adu, to_uint16(adu, offset), offset, mask, np.argwhere(hot), truth, params)
