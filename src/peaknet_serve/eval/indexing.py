"""Frames of one known crystal for indexing checks, their truth, and indexing scores.

peaksim draws every frame parameter at random; an indexing check needs the experiment a geometry
file describes: one cell, the photon energy and distance of the geometry, the beam on the
detector's nominal centre, one crystal per frame. The orientation stays random (and is the truth
to check against), and so do the crystal's quality, the spot shapes, background and detector
response.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from peaknet_serve.encode.cxi import RESULT_GROUP, CxiPeaks, FrameSource, write_peak_file
from peaknet_serve.eval.crystfel import TRUE_ORIENTATION_DEG, IndexingRun, misorientation_deg, write_cell_file
from peaknet_serve.geometry import ExperimentSetup
from peaknet_serve.sim.peaksim.cxi import write_cxi
from peaknet_serve.sim.peaksim.frame import SimulatedFrame, sample_frame_params, simulate_frame
from peaknet_serve.sim.peaksim.geometry import DetectorGeometry
from peaknet_serve.sim.peaksim.lattice import UnitCell, random_rotation, reciprocal_matrix

__all__ = [
    "LYSOZYME",
    "TRUTH_PATH",
    "KnownCell",
    "IndexingScore",
    "read_truth_orientations",
    "score_run",
    "simulate_known_cell",
    "write_known_cell_run",
    "write_truth_peak_file",
]

TRUTH_PATH = "/truth/reciprocal"
MIN_SPOT_PHOTONS_PER_REFLECTION = 100.0


@dataclass(frozen=True)
class KnownCell(UnitCell):
    """A unit cell (Angstrom, degrees) with its CrystFEL lattice description."""

    lattice_type: str = "triclinic"
    centering: str = "P"
    unique_axis: str | None = None

    @property
    def unit_cell(self) -> UnitCell:
        """The cell alone, as peaksim's crystals hold it."""
        return UnitCell(self.a, self.b, self.c, self.alpha, self.beta, self.gamma)

    def write(self, path: str | Path) -> Path:
        """The CrystFEL cell file (``-p``)."""
        return write_cell_file(path, **asdict(self))


LYSOZYME = KnownCell(79.1, 79.1, 38.0, lattice_type="tetragonal", unique_axis="c")


def simulate_known_cell(
    detector: DetectorGeometry, n_frames: int, cell: KnownCell, setup: ExperimentSetup, seed: int
) -> tuple[list[SimulatedFrame], np.ndarray]:
    """``n_frames`` peaksim frames of one crystal of ``cell`` each, in the experiment ``setup`` describes.

    The crystal's mosaicity, size, resolution and B-factor are peaksim's draws; its brightness is
    at least :data:`MIN_SPOT_PHOTONS_PER_REFLECTION` photons per reflection (a frame that is a hit).

    Returns:
        ``(frames, reciprocal)``: the frames, and float64 ``(N, 3, 3)`` true reciprocal bases
        (rows a*, b*, c* in the lab frame, 1/Angstrom).
    """
    rng = np.random.default_rng(seed)
    frames, truth = [], []
    for _ in range(n_frames):
        params = sample_frame_params(rng, detector, blank_probability=0.0, multi_crystal_probability=0.0)
        crystal = replace(
            params.crystals[0],
            cell=cell.unit_cell,
            rotation=random_rotation(rng),
            photons_per_reflection=max(params.crystals[0].photons_per_reflection, MIN_SPOT_PHOTONS_PER_REFLECTION),
        )
        params = replace(
            params,
            crystals=(crystal,),
            photon_energy_kev=setup.photon_energy_ev / 1000.0,
            distance=setup.clen_m,
            beam_offset=setup.beam_offset_m,
            bandwidth=setup.bandwidth,
        )
        frames.append(simulate_frame(detector, rng, params=params))
        truth.append(reciprocal_matrix(crystal.cell.real_space_matrix()) @ crystal.rotation.T)
    return frames, np.stack(truth)


def write_known_cell_run(
    path: str | Path, frames: list[SimulatedFrame], reciprocal: np.ndarray, detector: str = ""
) -> Path:
    """peaksim's CXI file of the frames (``(N, P, H, W)``, or ``(N, H, W)`` for one panel; mask;
    truth peaks) with the true orientations at :data:`TRUTH_PATH`."""
    path = write_cxi(path, frames, detector=detector)
    with h5py.File(path, "a") as h5:
        h5[TRUTH_PATH] = reciprocal
        h5[TRUTH_PATH].attrs["description"] = "rows a*, b*, c* in the lab frame (1/Angstrom), per frame"
    return path


def read_truth_orientations(path: str | Path) -> np.ndarray:
    """float64 ``(N, 3, 3)`` true reciprocal bases of a run file (1/Angstrom)."""
    with h5py.File(path, "r") as h5:
        return h5[TRUTH_PATH][()]


def write_truth_peak_file(
    run: str | Path, output: str | Path, panels: int, panel_height: int, panel_width: int
) -> Path:
    """A data-bearing peak file of the simulator's strong truth peaks over the run's frames (the
    best any peak finder could hand to the indexer)."""
    with h5py.File(run, "r") as h5:
        group = h5[RESULT_GROUP]
        n_peaks = group["nPeaks"][()].astype(np.int32)
        x, y = group["peakXPosRaw"][()], group["peakYPosRaw"][()]
        intensity = group["peakTotalIntensity"][()]
    n = n_peaks.size
    peaks = CxiPeaks(n_peaks, x, y, intensity, intensity, np.zeros_like(x), n_peaks.astype(np.int64), panel_height)
    source = FrameSource(Path(run), "/entry_1/data_1/data", (n, panels, panel_height, panel_width))
    return write_peak_file(output, peaks, source, {"peaks_from": "simulator truth (strong spots)"})


@dataclass(frozen=True)
class IndexingScore:
    """How one peak source indexed.

    Attributes:
        frames: frames offered to the indexer.
        indexed: frames with at least one crystal.
        true_orientation: indexed frames whose first crystal is the true orientation (within
            :data:`~peaknet_serve.eval.crystfel.TRUE_ORIENTATION_DEG`, any re-indexing).
        coordinate_warnings: CrystFEL messages about peaks it could not place on a panel.
        median_misorientation_deg: over the indexed frames (``inf`` for another lattice).
        seconds: indexamajig's wall time.
    """

    frames: int
    indexed: int
    true_orientation: int
    coordinate_warnings: int
    median_misorientation_deg: float
    seconds: float

    @property
    def rate(self) -> float:
        return self.indexed / self.frames if self.frames else 0.0

    @property
    def true_fraction(self) -> float:
        """True orientations among the indexed frames (1.0 when none was indexed)."""
        return self.true_orientation / self.indexed if self.indexed else 1.0


def score_run(
    run: IndexingRun, events: list[tuple[Path, int]], truth: dict[tuple[Path, int], np.ndarray]
) -> IndexingScore:
    """Score ``run`` over ``events`` against the true reciprocal bases."""
    angles = []
    for file, event in events:
        found = run.crystals.get((str(Path(file).resolve()), event), [])
        if found:
            angles.append(misorientation_deg(found[0], truth[(file, event)]))
    angles_array = np.asarray(angles, dtype=np.float64)
    return IndexingScore(
        frames=len(events),
        indexed=len(angles),
        true_orientation=int((angles_array < TRUE_ORIENTATION_DEG).sum()),
        coordinate_warnings=len(run.coordinate_warnings),
        median_misorientation_deg=float(np.median(angles_array)) if angles else float("nan"),
        seconds=run.seconds,
    )
