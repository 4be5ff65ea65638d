"""One simulated SFX frame end to end: crystal(s) -> reflections -> spots + background -> detector.

Every parameter is drawn from a wide, physically plausible range by :func:`sample_frame_params`
from a seeded ``np.random.Generator``; the same seed gives the same frame bit for bit.

Artefacts of real frames (liquid-jet streak, beamstop support arm, common-mode offsets; see
:mod:`peaknet_serve.sim.peaksim.artefacts`) are added only when ``artefact_probability > 0``; with the default 0 no
extra random numbers are drawn, so a seed gives the same frame with and without them. Likewise the wider
conditions of :mod:`peaknet_serve.sim.peaksim.coverage` (sharp spots, photon counting, extreme
backgrounds, saturation, gain switching, point spots) apply only when a :class:`Coverage` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from peaknet_serve.sim.peaksim.artefacts import (
    SHADOW_TRANSMISSION,
    Artefacts,
    arm_shadow,
    common_mode_map,
    jet_streak_photons,
    sample_artefacts,
)
from peaknet_serve.sim.peaksim.background import (
    BackgroundParams,
    background_photons,
    sample_background,
    scattering_geometry,
)
from peaknet_serve.sim.peaksim.coverage import Coverage, apply_coverage
from peaknet_serve.sim.peaksim.detector import (
    DetectorResponse,
    apply_bad_pixels,
    photons_to_adu,
    poisson_photons,
    sample_bad_pixels,
    to_uint16,
)
from peaknet_serve.sim.peaksim.diffraction import (
    CrystalState,
    ewald_reflections,
    polarization_factor,
    wavelength_angstrom,
    wilson_intensities,
)
from peaknet_serve.sim.peaksim.geometry import DetectorGeometry
from peaknet_serve.sim.peaksim.lattice import UnitCell, random_rotation, random_unit_cell, reciprocal_matrix
from peaknet_serve.sim.peaksim.matching import MATCH_RADIUS, MatchCounts, match_peaks
from peaknet_serve.sim.peaksim.spots import render_spots, spot_footprints
from peaknet_serve.sim.peaksim.truth import (
    PeakTruth,
    classify_peaks,
    inside_panel,
    integrated_snr,
    merged_spots,
    peak_pixel_snr,
    segmentation_maps,
    straddles,
    transmitted_fraction,
)

MIN_SPOT_PHOTONS = 0.5
TARGET_IGNORE = 255  # value of ignored pixels in SimulatedFrame.target
# Peak-pixel SNR bar of training targets: a pixel holding a few photons over a nearly empty
# background (photon counting) stands many noise sigmas above it, as a local-SNR finder sees it.
TARGET_PEAK_PIXEL_SNR = 1.0


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


@dataclass(frozen=True)
class CrystalParams:
    """One crystal: cell, orientation and quality."""

    cell: UnitCell
    rotation: np.ndarray
    mosaicity_deg: float
    domain_size: float
    d_min: float
    b_factor: float
    photons_per_reflection: float


@dataclass(frozen=True)
class FrameParams:
    """Everything that defines one frame (besides the noise draws). Spot widths are clipped to
    ``[min_spot_sigma, 3]`` px."""

    photon_energy_kev: float
    bandwidth: float
    distance: float
    beam_offset: tuple[float, float]
    crystals: tuple[CrystalParams, ...]
    spot_sigma: float
    spot_sigma_jitter: float
    spot_anisotropy: float
    background: BackgroundParams
    response: DetectorResponse
    beamstop_radius: float
    artefacts: Artefacts = field(default_factory=Artefacts)
    min_spot_sigma: float = 0.4

    @property
    def wavelength(self) -> float:
        return wavelength_angstrom(self.photon_energy_kev)

    @property
    def read_noise_photons(self) -> float:
        return self.response.read_noise_adu / self.response.adu_per_photon


def sample_crystal(rng: np.random.Generator, cell_range: tuple[float, float] = (30.0, 250.0)) -> CrystalParams:
    """A crystal with cell, orientation, mosaicity, resolution and brightness from wide ranges."""
    return CrystalParams(
        cell=random_unit_cell(rng, cell_range),
        rotation=random_rotation(rng),
        mosaicity_deg=_log_uniform(rng, 0.01, 0.3),
        domain_size=_log_uniform(rng, 300.0, 5000.0),
        d_min=float(rng.uniform(1.3, 5.0)),
        b_factor=float(rng.uniform(5.0, 80.0)),
        photons_per_reflection=_log_uniform(rng, 5.0, 5000.0),
    )


def sample_response(rng: np.random.Generator, geometry: DetectorGeometry, photon_energy_kev: float) -> DetectorResponse:
    """Gain and noise of this frame from the detector's typical ranges, widened for robustness."""
    adu_per_kev = (
        _log_uniform(rng, *geometry.adu_per_kev_range)
        if geometry.adu_per_kev_range[0] < geometry.adu_per_kev_range[1]
        else geometry.adu_per_kev_range[0]
    )
    adu_per_kev *= _log_uniform(rng, 0.7, 1.4)
    gain = adu_per_kev * photon_energy_kev
    read_noise_kev = _log_uniform(rng, *geometry.read_noise_kev_range) * _log_uniform(rng, 0.5, 2.0)
    n_panels = geometry.n_panels
    return DetectorResponse(
        adu_per_photon=gain,
        read_noise_adu=read_noise_kev * adu_per_kev,
        panel_offset_adu=rng.normal(0.0, 0.1, size=n_panels) * gain,
        panel_gain=1.0 + rng.normal(0.0, 0.02, size=n_panels),
        saturation_adu=geometry.saturation_adu,
        dead_fraction=_log_uniform(rng, 1e-5, 2e-3),
        hot_fraction=_log_uniform(rng, 1e-6, 2e-4),
    )


MIN_SPOT_SPACING_PX = 6.0
SPOT_SPACING_SIGMAS = 4.0
MAX_DISTANCE_STRETCH = 1.5


def resolvable_distance(max_cell_edge: float, wavelength: float, pixel_size: float, spot_sigma: float) -> float:
    """Shortest detector distance (m) at which neighbouring spots of a cell edge ``max_cell_edge``
    (Angstrom) are ``max(6 px, 4 sigma)`` apart: spacing on the detector is ~ ``D lambda / a``.

    Experiments are set up so that spots are resolved; frames with hopelessly overlapping spots
    would teach the network (and score it on) something no experiment records.
    """
    spacing = max(MIN_SPOT_SPACING_PX, SPOT_SPACING_SIGMAS * spot_sigma) * pixel_size
    return max_cell_edge * spacing / wavelength


def _scaled_cell(crystal: CrystalParams, factor: float) -> CrystalParams:
    cell = crystal.cell
    scaled = UnitCell(cell.a * factor, cell.b * factor, cell.c * factor, cell.alpha, cell.beta, cell.gamma)
    return CrystalParams(
        scaled,
        crystal.rotation,
        crystal.mosaicity_deg,
        crystal.domain_size,
        crystal.d_min,
        crystal.b_factor,
        crystal.photons_per_reflection,
    )


def sample_frame_params(
    rng: np.random.Generator,
    geometry: DetectorGeometry,
    blank_probability: float = 0.06,
    multi_crystal_probability: float = 0.15,
    artefact_probability: float = 0.0,
    coverage: Coverage | None = None,
) -> FrameParams:
    """Draw a full parameter set for one frame on ``geometry``.

    The distance is drawn from the detector's range but no shorter than
    :func:`resolvable_distance` allows (up to 1.5x the range's top; beyond that the cell shrinks).

    ``artefact_probability`` (0..1): chance per frame of each artefact kind of
    :mod:`peaknet_serve.sim.peaksim.artefacts`, drawn after everything else and only when it is above 0 (so the
    default draws exactly the random numbers it always did).

    ``coverage``: the wider conditions of :mod:`peaknet_serve.sim.peaksim.coverage`, drawn after the
    base parameters and before the artefacts (so a jet or common mode follows the scaled background
    and noise); None, the default, draws nothing.
    """
    if not 0.0 <= artefact_probability <= 1.0:
        raise ValueError(f"artefact_probability must be in [0, 1], got {artefact_probability}")
    energy = float(rng.uniform(6.0, 12.0))
    n_crystals = 0 if rng.random() < blank_probability else (2 if rng.random() < multi_crystal_probability else 1)
    crystals = tuple(sample_crystal(rng) for _ in range(n_crystals))
    spot_sigma = float(rng.uniform(0.5, 2.5))
    wavelength = wavelength_angstrom(energy)
    lo, hi = geometry.distance_range
    longest = max((max(c.cell.a, c.cell.b, c.cell.c) for c in crystals), default=0.0)
    needed = resolvable_distance(longest, wavelength, geometry.pixel_size, spot_sigma)
    if needed > MAX_DISTANCE_STRETCH * hi:
        crystals = tuple(_scaled_cell(c, MAX_DISTANCE_STRETCH * hi / needed) for c in crystals)
        needed = MAX_DISTANCE_STRETCH * hi
    distance = float(rng.uniform(max(lo, needed), max(hi, needed)))
    params = FrameParams(
        photon_energy_kev=energy,
        bandwidth=float(rng.uniform(0.001, 0.006)),
        distance=distance,
        beam_offset=(float(rng.normal(0.0, 1.5e-3)), float(rng.normal(0.0, 1.5e-3))),
        crystals=crystals,
        spot_sigma=spot_sigma,
        spot_sigma_jitter=float(rng.uniform(0.0, 0.2)),
        spot_anisotropy=float(rng.uniform(0.0, 0.25)),
        background=sample_background(rng),
        response=sample_response(rng, geometry, energy),
        beamstop_radius=float(rng.uniform(1.0e-3, 4.0e-3)),
    )
    if coverage is not None:
        params = apply_coverage(rng, params, coverage)
    if artefact_probability > 0.0:
        params = replace(
            params,
            artefacts=sample_artefacts(
                rng, geometry, artefact_probability, params.background.water, params.response.read_noise_adu
            ),
        )
    return params


@dataclass(frozen=True)
class Spots:
    """Spots that landed on a panel, each (S,)."""

    panel: np.ndarray
    ss: np.ndarray
    fs: np.ndarray
    photons: np.ndarray
    sigma_ss: np.ndarray
    sigma_fs: np.ndarray


def crystal_spots(
    rng: np.random.Generator, crystal: CrystalParams, params: FrameParams, geometry: DetectorGeometry
) -> Spots:
    """Reflections of one crystal projected onto the detector, with photons and widths."""
    state = CrystalState(
        reciprocal=reciprocal_matrix(crystal.cell.real_space_matrix()) @ crystal.rotation.T,
        mosaicity_rad=np.deg2rad(crystal.mosaicity_deg),
        domain_size=crystal.domain_size,
        d_min=crystal.d_min,
    )
    refl = ewald_reflections(state, params.wavelength, params.bandwidth)
    x = refl.s[:, 0] / refl.s[:, 2] * params.distance
    y = refl.s[:, 1] / refl.s[:, 2] * params.distance
    panel, ss, fs = geometry.lab_to_panel(x, y, params.beam_offset)
    intensity = wilson_intensities(rng, refl.d, crystal.b_factor)
    photons = crystal.photons_per_reflection * intensity * refl.partiality * polarization_factor(refl.s)
    keep = (panel >= 0) & (photons >= MIN_SPOT_PHOTONS)
    n = int(keep.sum())
    base = params.spot_sigma * (1.0 + params.spot_sigma_jitter * rng.uniform(-1.0, 1.0, size=n))
    stretch = np.exp(params.spot_anisotropy * rng.uniform(-1.0, 1.0, size=n))
    return Spots(
        panel[keep],
        ss[keep],
        fs[keep],
        photons[keep],
        np.clip(base * stretch, params.min_spot_sigma, 3.0),
        np.clip(base / stretch, params.min_spot_sigma, 3.0),
    )


def _concat_spots(spots: list[Spots]) -> Spots:
    if not spots:
        empty_i, empty_f = np.zeros(0, dtype=np.int64), np.zeros(0)
        return Spots(empty_i, empty_f, empty_f, empty_f, empty_f, empty_f)
    return Spots(*(np.concatenate([getattr(s, f) for s in spots]) for f in Spots.__dataclass_fields__))


@dataclass(frozen=True)
class SimulatedFrame:
    """One frame and its truth.

    Attributes:
        adu: (P, ss, fs) float32 calibrated ADU.
        mask: (P, ss, fs) uint8, 1 = good pixel.
        label: (P, ss, fs) uint8 segmentation mask of strong spots (1 = peak pixel).
        ignore: (P, ss, fs) bool pixels of weak spots (neither peak nor background).
        peaks: per-spot truth (strong and weak).
        params: what produced the frame.
        blobs: (K, 3) float64 (panel, ss, fs) centroids of blobs holding a bright spot together
            with another spot (``peaks.merged``): a detection there counts neither way.
        excused_region: (P, ss, fs) bool bounding boxes of the blobs (segmentation mask together
            with the weak spots' ignore ellipses) that are not one resolved strong spot's: weak spots
            and merged groups. An unmatched detection in them counts neither way.
        target: (P, ss, fs) uint8 training target under a lower strong bar (0 background, 1 peak
            pixel, :data:`TARGET_IGNORE` ignored), or None: see :func:`simulate_frame`'s ``target_snr``.
    """

    adu: np.ndarray
    mask: np.ndarray
    label: np.ndarray
    ignore: np.ndarray
    peaks: PeakTruth
    params: FrameParams
    blobs: np.ndarray
    excused_region: np.ndarray
    target: np.ndarray | None = None

    def scoring_points(self) -> tuple[np.ndarray, np.ndarray]:
        """``(strong, excused)`` (K, 3) / (M, 3) float64 rows (panel, ss, fs) for
        :func:`peaknet_serve.sim.peaksim.matching.match_peaks`: the spots that must be found, and where a detection
        counts neither way (weak and merged spots, and the centroids of merged blobs)."""
        p = self.peaks

        def points(which: np.ndarray) -> np.ndarray:
            return np.stack([p.panel[which], p.ss[which], p.fs[which]], axis=1).astype(np.float64)

        return points(p.strong), np.concatenate([points(p.weak), self.blobs.reshape(-1, 3)])

    def score(self, found: np.ndarray, radius: float = MATCH_RADIUS) -> MatchCounts:
        """Score a peak list (N, 3) (panel, ss, fs) against this frame's truth: strong spots must
        be found within ``radius``; detections near weak spots, at merged blobs' centroids or on
        :attr:`excused_region` count neither way (:func:`peaknet_serve.sim.peaksim.matching.match_peaks`)."""
        strong, excused = self.scoring_points()
        return match_peaks(found, strong, excused, radius, excused_region=self.excused_region)

    @property
    def uint16(self) -> np.ndarray:
        """(P, ss, fs) uint16 version of :attr:`adu`."""
        return to_uint16(self.adu)


def simulate_frame(
    geometry: DetectorGeometry,
    rng: np.random.Generator,
    params: FrameParams | None = None,
    artefact_probability: float = 0.0,
    coverage: Coverage | None = None,
    target_snr: float | None = None,
) -> SimulatedFrame:
    """Simulate one frame on ``geometry``; parameters are sampled from ``rng`` unless given.

    ``artefact_probability`` is passed to :func:`sample_frame_params` (ignored when ``params`` are
    given: their ``artefacts`` apply). Artefacts are applied without drawing random numbers:

    * a jet streak is added to the expected background photons (before the shadows);
    * in a beamstop arm's shadow (outside the beamstop disc, which keeps its own handling) spots
      and background are scaled by :data:`SHADOW_TRANSMISSION`; the mask covers it when
      ``arm.masked``;
    * common-mode offsets are added to the ADU after the read noise (then clipped at saturation
      again), before dead and hot pixels.

    Truth with an arm uses what the detector saw: spot photons and background times the arm's
    transmission (the integrated SNR with the footprint's transmitted share, the peak-pixel SNR and
    the segmentation mask pixel by pixel), and a spot whose 2-sigma ellipse crosses the arm's edge
    cannot be strong (its centroid is biased, as at a panel edge).

    ``coverage`` is passed to :func:`sample_frame_params` (ignored when ``params`` are given).
    ``target_snr`` (None: no target) adds :attr:`SimulatedFrame.target`, a training target whose
    peaks are the spots a local-SNR peak finder tuned for recall reports: the strong rule with
    the integrated-SNR bar lowered to ``target_snr`` and the peak-pixel bar to
    :data:`TARGET_PEAK_PIXEL_SNR` (the panel and mask conditions kept); other spots above the
    weak bar are ignored (:data:`TARGET_IGNORE`). The truth (``peaks``, ``label``, the
    scoring) is unchanged.
    """
    if params is None:
        params = sample_frame_params(rng, geometry, artefact_probability=artefact_probability, coverage=coverage)
    artefacts = params.artefacts
    shape = geometry.frame_shape
    spots = _concat_spots([crystal_spots(rng, c, params, geometry) for c in params.crystals])
    flat, mass, spot_id = spot_footprints(spots.panel, spots.ss, spots.fs, spots.sigma_ss, spots.sigma_fs, shape)

    x, y = geometry.pixel_lab_xy(params.beam_offset)
    q, cos2t, pol = scattering_geometry(x, y, params.distance, params.wavelength)
    background = background_photons(params.background, q, cos2t, pol)
    if artefacts.jet is not None:
        background += jet_streak_photons(x, y, cos2t, artefacts.jet)
    beamstop = (x.astype(np.float64) ** 2 + y.astype(np.float64) ** 2) < params.beamstop_radius**2
    expected = render_spots(spots.photons, flat, mass, spot_id, shape) + background
    expected[beamstop] *= SHADOW_TRANSMISSION
    shadow = None
    masked_shadow = beamstop
    if artefacts.arm is not None:
        shadow = arm_shadow(x, y, artefacts.arm) & ~beamstop
        expected[shadow] *= SHADOW_TRANSMISSION
        if artefacts.arm.masked:
            masked_shadow = beamstop | shadow

    response = params.response
    adu = photons_to_adu(rng, poisson_photons(rng, expected), response)
    if artefacts.common_mode is not None:
        adu += common_mode_map(artefacts.common_mode, shape)
        np.minimum(adu, np.float32(response.saturation_adu), out=adu)
    bad, hot_masked = sample_bad_pixels(rng, geometry.border_mask(), masked_shadow, response)
    adu = apply_bad_pixels(rng, adu, bad, response)
    mask = bad.good_mask(hot_masked)

    read_noise = params.read_noise_photons
    centre = (spots.panel, np.rint(spots.ss).astype(np.int64), np.rint(spots.fs).astype(np.int64))
    centre = (centre[0], centre[1].clip(0, shape[1] - 1), centre[2].clip(0, shape[2] - 1))
    findable = mask[centre].astype(bool) & inside_panel(
        spots.ss, spots.fs, spots.sigma_ss, spots.sigma_fs, shape[1], shape[2]
    )
    photons, peak_photons, seen_mass, seen_background = spots.photons, spots.photons, mass, background
    if shadow is not None:
        transmission = np.where(shadow, np.float32(SHADOW_TRANSMISSION), np.float32(1.0))
        seen_mass = mass * transmission.ravel()[flat]
        photons = spots.photons * transmitted_fraction(mass, seen_mass, spot_id, len(spots.photons))
        peak_photons = spots.photons * transmission[centre]
        seen_background = background * transmission
        findable &= ~straddles(
            shadow, flat, spot_id, spots.ss, spots.fs, spots.sigma_ss, spots.sigma_fs, len(spots.photons)
        )
    b_centre = seen_background[centre].astype(np.float64)
    snr = integrated_snr(photons, spots.sigma_ss, spots.sigma_fs, b_centre, read_noise)
    peak_snr = peak_pixel_snr(peak_photons, spots.ss, spots.fs, spots.sigma_ss, spots.sigma_fs, b_centre, read_noise)
    strong, weak = classify_peaks(photons, snr, peak_snr, findable)

    def maps(strong: np.ndarray, weak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label, ignore) of this frame's spots under the ``strong`` / ``weak`` split."""
        return segmentation_maps(
            shape,
            flat,
            seen_mass,
            spot_id,
            spots.photons,
            spots.panel,
            spots.ss,
            spots.fs,
            spots.sigma_ss,
            spots.sigma_fs,
            strong,
            weak,
            seen_background,
            read_noise,
        )

    label, ignore = maps(strong, weak)
    merged, blobs, excused_region = merged_spots(label, ignore, spots.panel, spots.ss, spots.fs, strong, weak)
    truth = PeakTruth(spots.panel, spots.ss, spots.fs, photons, snr, peak_snr, strong & ~merged, weak | merged, merged)
    target = None
    if target_snr is not None:
        t_strong, t_weak = classify_peaks(
            photons, snr, peak_snr, findable, strong_snr=target_snr, strong_peak_snr=TARGET_PEAK_PIXEL_SNR
        )
        t_label, t_ignore = maps(t_strong, t_weak)
        target = np.where(t_ignore, np.uint8(TARGET_IGNORE), t_label)
    return SimulatedFrame(adu, mask, label, ignore, truth, params, blobs, excused_region, target)
