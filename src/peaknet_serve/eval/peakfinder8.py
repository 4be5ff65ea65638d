"""OM's peakfinder8 as the baseline of the evaluations: a worker process, a grid search, scoring.

peakfinder8 (Barty et al., J. Appl. Cryst. 47, 1118 (2014); the implementation of OM, PyPI
``ondamonitor``) is the classical local-SNR peak finder of serial crystallography. OM needs
numpy < 2, so it lives in a virtual environment of its own (``make pf8-venv`` creates
``.venv-pf8``); :class:`Peakfinder8` runs :mod:`peaknet_serve.eval.pf8_worker` in that
environment's Python and talks to it through ``.npy`` files and one JSON line per request.

A frame is handed over as OM expects a multi-panel detector: the (P, ss, fs) panels stacked along
ss into one (P * ss, fs) slab with one ASIC per panel (peakfinder8 never joins pixels across
ASICs), the bad-pixel mask (1 = good) and each pixel's distance from the beam in pixels (for the
radial background statistics). Peaks come back as (panel, ss, fs) in pixel-index coordinates
(pixel centres at integers), as the model's peaks are.

The ADC threshold is given in photons (:attr:`Peakfinder8Params.adc_threshold_photons`) and
converted with each frame's gain: a beamline user sets it from the detector's calibration, and the
simulated frames of one detector span gains over a decade or more.

:func:`tune` picks the parameter set of best pooled F1 on a few tuning frames from a grid
(:data:`DEFAULT_GRID`); :func:`score` runs the chosen set on the held-out frames.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from peaknet_serve.resources import REPO_ROOT
from peaknet_serve.sim.peaksim.matching import MatchCounts

WORKER = Path(__file__).with_name("pf8_worker.py")
PYTHON_ENV = "PEAKNET_PF8_PYTHON"
DEFAULT_VENV_PYTHON = REPO_ROOT / ".venv-pf8" / "bin" / "python"


@dataclass(frozen=True)
class Peakfinder8Params:
    """One peakfinder8 setting (OM's parameter names; the ADC threshold in photons)."""

    minimum_snr: float = 6.0
    min_pixel_count: int = 2
    max_pixel_count: int = 200
    local_bg_radius: int = 3
    adc_threshold_photons: float = 0.0
    min_res: int = 0
    max_res: int = 100000
    max_num_peaks: int = 20000

    def for_gain(self, adu_per_photon: float) -> dict:
        """OM's parameter group for a frame of gain ``adu_per_photon``."""
        group = asdict(self)
        group["adc_threshold"] = self.adc_threshold_photons * adu_per_photon
        del group["adc_threshold_photons"]
        return group


def parameter_grid(
    minimum_snr: Sequence[float] = (4.0, 5.0, 6.0, 7.0, 8.0, 10.0),
    min_pixel_count: Sequence[int] = (1, 2, 3),
    local_bg_radius: Sequence[int] = (3, 5),
    adc_threshold_photons: Sequence[float] = (0.0, 3.0),
) -> list[Peakfinder8Params]:
    """Every combination of the given values (the defaults are :data:`DEFAULT_GRID`)."""
    return [
        Peakfinder8Params(minimum_snr=s, min_pixel_count=m, local_bg_radius=r, adc_threshold_photons=a)
        for s, m, r, a in itertools.product(minimum_snr, min_pixel_count, local_bg_radius, adc_threshold_photons)
    ]


DEFAULT_GRID = parameter_grid()


@dataclass(frozen=True)
class Pf8Frame:
    """A frame as peakfinder8 gets it.

    Attributes:
        adu: (P, ss, fs) float32 calibrated ADU.
        mask: (P, ss, fs) uint8 or bool, 1 = good pixel.
        radius: (P, ss, fs) float distance of each pixel centre from the beam, pixels.
        adu_per_photon: the frame's gain.
    """

    adu: np.ndarray
    mask: np.ndarray
    radius: np.ndarray
    adu_per_photon: float


@dataclass(frozen=True)
class Pf8Result:
    """Peaks of one frame under one parameter set: (K, 3) float64 (panel, ss, fs) and the
    median milliseconds of peakfinder8 itself (inside the worker)."""

    peaks: np.ndarray
    ms: float


def pf8_python() -> Path:
    """The Python of peakfinder8's virtual environment: ``$PEAKNET_PF8_PYTHON``, else the
    checkout's ``.venv-pf8``.

    Raises:
        FileNotFoundError: neither exists (the message says how to make it).
    """
    configured = os.environ.get(PYTHON_ENV)
    path = Path(configured) if configured else DEFAULT_VENV_PYTHON
    if not path.is_file():
        raise FileNotFoundError(
            f"peakfinder8's Python {path} does not exist: run `make pf8-venv` (a virtual "
            f"environment with ondamonitor and numpy<2) or set {PYTHON_ENV}"
        )
    return path


class Peakfinder8:
    """A running :mod:`peaknet_serve.eval.pf8_worker`; use as a context manager.

    Args:
        python: the interpreter of the environment holding OM (default :func:`pf8_python`).
    """

    def __init__(self, python: Path | str | None = None) -> None:
        self._python = Path(python) if python is not None else pf8_python()
        self._dir = tempfile.TemporaryDirectory(prefix="peaknet-pf8-")
        self._process = subprocess.Popen(
            [str(self._python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._written: set[str] = set()

    def __enter__(self) -> Peakfinder8:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker and remove its files."""
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._dir.cleanup()

    def _request(self, request: dict) -> dict:
        if self._process.poll() is not None:
            raise RuntimeError(f"peakfinder8 worker exited with status {self._process.returncode}")
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"peakfinder8 worker exited (status {self._process.wait()})")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"peakfinder8 worker: {answer.get('error')}")
        return answer

    def version(self) -> dict[str, str]:
        """``{"om": ..., "numpy": ...}`` of the worker's environment."""
        answer = self._request({"op": "version"})
        return {"om": answer["om"], "numpy": answer["numpy"]}

    def _save(self, array: np.ndarray, dtype: type) -> str:
        """Write ``array`` once per content (masks and radius maps repeat); returns the path."""
        array = np.ascontiguousarray(array, dtype=dtype)
        key = hashlib.blake2b(array.tobytes(), digest_size=12).hexdigest()
        path = os.path.join(self._dir.name, f"{key}.npy")
        if key not in self._written:
            np.save(path, array)
            self._written.add(key)
        return path

    def find(self, frame: Pf8Frame, params: Sequence[Peakfinder8Params], repeat: int = 1) -> list[Pf8Result]:
        """Peaks of ``frame`` under each parameter set (the frame is handed over once)."""
        n_panels, n_ss, n_fs = frame.adu.shape
        slab = (n_panels * n_ss, n_fs)
        data = os.path.join(self._dir.name, "frame.npy")
        np.save(data, np.ascontiguousarray(frame.adu, dtype=np.float32).reshape(slab))
        request = {
            "op": "find",
            "data": data,
            "mask": self._save(frame.mask.reshape(slab), np.int8),
            "radius": self._save(frame.radius.reshape(slab), np.float32),
            "layout": {"asic_nx": n_fs, "asic_ny": n_ss, "nasics_x": 1, "nasics_y": n_panels},
            "params": [p.for_gain(frame.adu_per_photon) for p in params],
            "repeat": repeat,
        }
        results = []
        for answer in self._request(request)["results"]:
            ss = np.asarray(answer["ss"], dtype=np.float64)
            fs = np.asarray(answer["fs"], dtype=np.float64)
            panel = np.clip(np.floor((ss + 0.5) / n_ss), 0, n_panels - 1)
            results.append(Pf8Result(np.stack([panel, ss - panel * n_ss, fs], axis=1), float(answer["ms"])))
        return results


Scorer = Callable[[np.ndarray], MatchCounts]


@dataclass(frozen=True)
class TuneResult:
    """The chosen parameters and the pooled counts of every grid point on the tuning frames."""

    best: Peakfinder8Params
    counts: list[tuple[Peakfinder8Params, MatchCounts]]

    def as_dict(self) -> dict:
        """JSON-friendly: the best set and its pooled counts, and the grid's size."""
        best = dict(self.counts)[self.best]
        return {"best": asdict(self.best), "tuning_counts": best.as_dict(), "grid_points": len(self.counts)}


def tune(
    finder: Peakfinder8, frames: Sequence[tuple[Pf8Frame, Scorer]], grid: Sequence[Peakfinder8Params] = DEFAULT_GRID
) -> TuneResult:
    """The grid point of best pooled F1 over ``frames`` (ties: the earlier point)."""
    totals = [MatchCounts() for _ in grid]
    for frame, scorer in frames:
        for i, result in enumerate(finder.find(frame, grid)):
            totals[i] = totals[i] + scorer(result.peaks)
    best = max(range(len(grid)), key=lambda i: (totals[i].f1, -i))
    return TuneResult(grid[best], list(zip(grid, totals)))


def score(
    finder: Peakfinder8, frame: Pf8Frame, scorer: Scorer, params: Peakfinder8Params, repeat: int = 3
) -> tuple[MatchCounts, Pf8Result]:
    """Counts and result of ``params`` on one held-out frame (``ms``: median of ``repeat`` runs)."""
    result = finder.find(frame, [params], repeat=repeat)[0]
    return scorer(result.peaks), result


def baseline_entry(tuned: TuneResult, counts: MatchCounts, ms: Sequence[float]) -> dict:
    """A detector's peakfinder8 entry of an evaluation report: the tuning, the held-out counts and
    the median milliseconds per frame."""
    return {**tuned.as_dict(), "accuracy": counts.as_dict(), "ms_per_frame": float(np.median(ms)) if ms else None}


def baseline_cells(entry: dict | None) -> list[str]:
    """Markdown cells ``F1 (P / R)`` and ``ms/frame`` of a peakfinder8 entry (dashes where none)."""
    if entry is None:
        return ["—", "—"]
    a = entry["accuracy"]
    ms = entry.get("ms_per_frame")
    return [f"{a['f1']:.3f} ({a['precision']:.3f} / {a['recall']:.3f})", "—" if ms is None else f"{ms:.0f}"]


def model_ms(accuracy: dict, frames: int) -> str:
    """A model entry's milliseconds per frame as a table cell (from its total seconds where a
    report predates the per-frame figure)."""
    ms = accuracy.get("ms_per_frame")
    if ms is None and "seconds" in accuracy and frames:
        ms = 1e3 * accuracy["seconds"] / frames
    return "—" if ms is None else f"{ms:.0f}"


def describe(params: dict) -> str:
    """Short text of a tuned parameter set (a report's ``best``)."""
    return (
        f"snr {params['minimum_snr']:g}, pixels {params['min_pixel_count']}-{params['max_pixel_count']}, "
        f"bg radius {params['local_bg_radius']}, ADC {params['adc_threshold_photons']:g} photons"
    )
