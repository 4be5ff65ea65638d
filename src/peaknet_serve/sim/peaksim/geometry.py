"""Detector geometries: panels laid out in a plane perpendicular to the beam.

The lab frame has +z along the beam, the detector plane at ``z = distance``; x, y span the plane.
Each panel is a rectangle of ``(ss, fs)`` pixels whose pixel (0, 0) centre sits at ``corner``
(metres, relative to the nominal beam centre) and whose fast/slow axes point along unit vectors
``fs_vector`` / ``ss_vector`` in the (x, y) plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DetectorGeometry:
    """A multi-panel (or single-panel) flat detector.

    Attributes:
        name: short identifier (``"epix10k2m"``, ...).
        panel_shape: ``(ss, fs)`` pixels of one panel.
        pixel_size: metres.
        corners: (P, 2) float64, lab (x, y) in metres of each panel's pixel (0, 0) centre.
        fs_vectors: (P, 2) float64 unit vectors of +fs in the lab plane.
        ss_vectors: (P, 2) float64 unit vectors of +ss in the lab plane.
        asic_shape: ``(ss, fs)`` of one readout ASIC (seams between ASICs are masked), or None.
        distance_range: metres, typical sample-to-detector distances for this detector.
        adu_per_kev_range: calibrated ADU per keV deposited (gain), min/max.
        read_noise_kev_range: read noise in keV equivalent, min/max.
        saturation_adu: values above are clipped (the ADC/gain-stage ceiling).
        common_mode_rows: heights (rows) of the blocks of an ASIC that share one common-mode
            offset, the options an artefact frame draws from (1 = per-row line noise); see
            :mod:`peaknet_serve.sim.peaksim.artefacts` and :attr:`common_mode_asic`.
    """

    name: str
    panel_shape: tuple[int, int]
    pixel_size: float
    corners: np.ndarray
    fs_vectors: np.ndarray
    ss_vectors: np.ndarray
    asic_shape: tuple[int, int] | None = None
    distance_range: tuple[float, float] = (0.08, 0.3)
    adu_per_kev_range: tuple[float, float] = (1.0, 20.0)
    read_noise_kev_range: tuple[float, float] = (0.1, 1.0)
    saturation_adu: float = 65535.0
    common_mode_rows: tuple[int, ...] = (1,)
    extra: dict = field(default_factory=dict)

    @property
    def common_mode_asic(self) -> tuple[int, int]:
        """``(ss, fs)`` of the readout unit whose row blocks share common-mode offsets: the ASIC,
        or the whole panel where there are none (a CCD: per-row offsets across the image)."""
        return self.asic_shape if self.asic_shape is not None else self.panel_shape

    @property
    def n_panels(self) -> int:
        return int(self.corners.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """``(P, ss, fs)`` of one frame."""
        return (self.n_panels, *self.panel_shape)

    def pixel_lab_xy(self, beam_offset: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
        """Lab (x, y) in metres of every pixel centre, relative to the (offset) beam.

        Returns:
            ``(x, y)``, each (P, ss, fs) float32.
        """
        n_ss, n_fs = self.panel_shape
        ss = np.arange(n_ss, dtype=np.float64)[:, None] * self.pixel_size
        fs = np.arange(n_fs, dtype=np.float64)[None, :] * self.pixel_size
        x = (
            self.corners[:, 0, None, None]
            - beam_offset[0]
            + ss * self.ss_vectors[:, 0, None, None]
            + fs * self.fs_vectors[:, 0, None, None]
        )
        y = (
            self.corners[:, 1, None, None]
            - beam_offset[1]
            + ss * self.ss_vectors[:, 1, None, None]
            + fs * self.fs_vectors[:, 1, None, None]
        )
        return x.astype(np.float32), y.astype(np.float32)

    def lab_to_panel(
        self, x: np.ndarray, y: np.ndarray, beam_offset: tuple[float, float] = (0.0, 0.0)
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map lab (x, y) points (metres, relative to the beam) to ``(panel, ss, fs)``.

        Args:
            x, y: (N,) float64.

        Returns:
            ``(panel, ss, fs)``: (N,) int64 panel index (-1 where the point hits no panel, e.g. a
            gap) and (N,) float64 continuous pixel coordinates (pixel centres at integers).
        """
        n_ss, n_fs = self.panel_shape
        dx = (x[None, :] + beam_offset[0] - self.corners[:, 0, None]) / self.pixel_size
        dy = (y[None, :] + beam_offset[1] - self.corners[:, 1, None]) / self.pixel_size
        fs = dx * self.fs_vectors[:, 0, None] + dy * self.fs_vectors[:, 1, None]
        ss = dx * self.ss_vectors[:, 0, None] + dy * self.ss_vectors[:, 1, None]
        inside = (fs >= -0.5) & (fs < n_fs - 0.5) & (ss >= -0.5) & (ss < n_ss - 0.5)
        hit = inside.any(axis=0)
        panel = np.where(hit, inside.argmax(axis=0), -1)
        cols = np.arange(x.shape[0])
        return panel, ss[panel.clip(0), cols], fs[panel.clip(0), cols]

    def border_mask(self) -> np.ndarray:
        """(P, ss, fs) bool, True on each panel's outer ring of pixels and on ASIC seams."""
        n_ss, n_fs = self.panel_shape
        edge = np.zeros(self.panel_shape, dtype=bool)
        edge[[0, -1], :] = True
        edge[:, [0, -1]] = True
        if self.asic_shape is not None:
            a_ss, a_fs = self.asic_shape
            for s in range(a_ss, n_ss, a_ss):
                edge[[s - 1, s], :] = True
            for f in range(a_fs, n_fs, a_fs):
                edge[:, [f - 1, f]] = True
        return np.broadcast_to(edge, self.frame_shape).copy()


def _grid_layout(
    n_rows: int, n_cols: int, panel_shape: tuple[int, int], pixel_size: float, gap: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Panels on an ``n_rows x n_cols`` grid centred on the beam, ss along +y and fs along +x."""
    height = panel_shape[0] * pixel_size
    width = panel_shape[1] * pixel_size
    total_h = n_rows * height + (n_rows - 1) * gap
    total_w = n_cols * width + (n_cols - 1) * gap
    corners = []
    for r in range(n_rows):
        for c in range(n_cols):
            x0 = -total_w / 2 + c * (width + gap) + pixel_size / 2
            y0 = -total_h / 2 + r * (height + gap) + pixel_size / 2
            corners.append((x0, y0))
    n = n_rows * n_cols
    fs_vectors = np.tile([1.0, 0.0], (n, 1))
    ss_vectors = np.tile([0.0, 1.0], (n, 1))
    return np.asarray(corners, dtype=np.float64), fs_vectors, ss_vectors


def epix10k2m() -> DetectorGeometry:
    """ePix10k2M (LCLS MFX/XPP): 16 modules of 352 x 384 pixels (2 x 2 ASICs of 176 x 192), 100 um.

    Calibrated psana images are in ADU; in high gain one keV deposits about 16 ADU (so an 8-10 keV
    photon is ~130-160 ADU); medium/low gain are ~3x/~100x less. Noise ~ 0.1-0.3 keV rms.
    """
    corners, fsv, ssv = _grid_layout(4, 4, (352, 384), 100e-6, gap=2.0e-3)
    return DetectorGeometry(
        "epix10k2m",
        (352, 384),
        100e-6,
        corners,
        fsv,
        ssv,
        asic_shape=(176, 192),
        distance_range=(0.08, 0.30),
        adu_per_kev_range=(0.5, 17.0),
        read_noise_kev_range=(0.1, 0.4),
        common_mode_rows=(1, 8, 16, 176),
    )


def jungfrau4m() -> DetectorGeometry:
    """Jungfrau 4M: 8 modules of 512 x 1024 pixels (2 x 4 ASICs of 256 x 256), 75 um.

    psana/SLS calibration usually gives keV (1 ADU = 1 keV); noise ~ 0.1-0.3 keV rms. Common mode
    (artefact frames) per 1, 16, 32 or 256 rows of each chip.
    """
    corners, fsv, ssv = _grid_layout(4, 2, (512, 1024), 75e-6, gap=1.5e-3)
    return DetectorGeometry(
        "jungfrau4m",
        (512, 1024),
        75e-6,
        corners,
        fsv,
        ssv,
        asic_shape=(256, 256),
        distance_range=(0.06, 0.20),
        adu_per_kev_range=(1.0, 1.0),
        read_noise_kev_range=(0.08, 0.3),
        common_mode_rows=(1, 16, 32, 256),
    )


def cspad() -> DetectorGeometry:
    """CSPAD: 32 two-by-one sensors of 185 x 388 pixels (2 ASICs of 185 x 194), 110 um.

    High gain ~ 3-4 ADU/keV (a 9.5 keV photon ~ 35 ADU), noise ~ 0.5-1 keV rms. Common mode
    (artefact frames) per 1, 37 or 185 rows of each ASIC.
    """
    corners, fsv, ssv = _grid_layout(8, 4, (185, 388), 110e-6, gap=1.0e-3)
    return DetectorGeometry(
        "cspad",
        (185, 388),
        110e-6,
        corners,
        fsv,
        ssv,
        asic_shape=(185, 194),
        distance_range=(0.08, 0.20),
        adu_per_kev_range=(2.5, 4.5),
        read_noise_kev_range=(0.4, 1.0),
        saturation_adu=16383.0,
        common_mode_rows=(1, 37, 185),
    )


def rayonix() -> DetectorGeometry:
    """Rayonix MX340-HS binned 2x2: one 1920 x 1920 CCD image of 177 um pixels.

    About 1-2 ADU per keV after binning; read noise a few ADU. Common mode (artefact frames): per
    row across the image (CCD line noise).
    """
    corners, fsv, ssv = _grid_layout(1, 1, (1920, 1920), 177.08e-6, gap=0.0)
    return DetectorGeometry(
        "rayonix",
        (1920, 1920),
        177.08e-6,
        corners,
        fsv,
        ssv,
        asic_shape=None,
        distance_range=(0.10, 0.30),
        adu_per_kev_range=(0.8, 2.5),
        read_noise_kev_range=(0.5, 3.0),
        common_mode_rows=(1,),
    )


GEOMETRIES = {"epix10k2m": epix10k2m, "jungfrau4m": jungfrau4m, "cspad": cspad, "rayonix": rayonix}


def get_geometry(name: str) -> DetectorGeometry:
    """Geometry by name (one of :data:`GEOMETRIES`)."""
    try:
        return GEOMETRIES[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(GEOMETRIES)}") from None
