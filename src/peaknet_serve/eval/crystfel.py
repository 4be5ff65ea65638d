"""CrystFEL in the loop: run ``indexamajig`` on CXI peak files, read its stream, check orientations.

CrystFEL is found through ``CRYSTFEL_BIN`` (the folder holding ``indexamajig``), then ``PATH``,
then the prebuilt copy a development checkout keeps at ``../shared/tools/crystfel/bin`` (from the
repository root). Stream orientations are the reciprocal axes ``astar/bstar/cstar`` in the lab
frame (nm^-1); peaksim and pattern_sim use the same frame (+z along the beam, right-handed, no
2*pi), so an orientation is *true* when the found reciprocal basis is an integer, unimodular
re-indexing of the true one up to a rotation of less than :data:`TRUE_ORIENTATION_DEG`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "COORDINATE_WARNINGS",
    "TRUE_ORIENTATION_DEG",
    "IndexingRun",
    "crystfel_bin",
    "misorientation_deg",
    "read_stream",
    "run_indexamajig",
    "write_cell_file",
]

TRUE_ORIENTATION_DEG = 1.0
# What libcrystfel prints when a peak list's coordinates fall outside every panel (or several).
COORDINATE_WARNINGS = ("Couldn't find panel", "Panel is ambiguous", "Failed to convert")
_REPO_ROOT = Path(__file__).resolve().parents[3]
_VECTOR = re.compile(r"^([abc])star = ([-+0-9.eE]+) ([-+0-9.eE]+) ([-+0-9.eE]+) nm\^-1")


def crystfel_bin() -> Path | None:
    """The folder with CrystFEL's programs (``indexamajig``, ``list_events``, ...), or None."""
    candidates = []
    if os.environ.get("CRYSTFEL_BIN"):
        candidates.append(Path(os.environ["CRYSTFEL_BIN"]))
    found = shutil.which("indexamajig")
    if found:
        candidates.append(Path(found).parent)
    candidates.append(_REPO_ROOT.parent / "shared" / "tools" / "crystfel" / "bin")
    for folder in candidates:
        program = folder / "indexamajig"
        if program.is_file() and os.access(program, os.X_OK) and _runs(program):
            return folder
    return None


def _runs(program: Path) -> bool:
    try:
        return subprocess.run([str(program), "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def write_cell_file(
    path: str | Path,
    a: float,
    b: float,
    c: float,
    alpha: float = 90.0,
    beta: float = 90.0,
    gamma: float = 90.0,
    lattice_type: str = "triclinic",
    centering: str = "P",
    unique_axis: str | None = None,
) -> Path:
    """A CrystFEL unit-cell file (lengths in Angstrom, angles in degrees)."""
    lines = ["CrystFEL unit cell file version 1.0", "", f"lattice_type = {lattice_type}", f"centering = {centering}"]
    if unique_axis:
        lines.append(f"unique_axis = {unique_axis}")
    lines += [
        "",
        f"a = {a:.4f} A",
        f"b = {b:.4f} A",
        f"c = {c:.4f} A",
        f"al = {alpha:.4f} deg",
        f"be = {beta:.4f} deg",
        f"ga = {gamma:.4f} deg",
        "",
    ]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path


@dataclass
class IndexingRun:
    """One ``indexamajig`` run.

    Attributes:
        stream: the stream file it wrote.
        crystals: ``{(file, event): [(3, 3) float64 reciprocal rows a*, b*, c* in 1/Angstrom, ...]}``
            for every event in the stream (empty list: not indexed).
        stderr: its messages.
        seconds: wall time.
        returncode: its exit status.
    """

    stream: Path
    crystals: dict[tuple[str, int], list[np.ndarray]]
    stderr: str
    seconds: float
    returncode: int
    command: list[str] = field(default_factory=list)

    @property
    def coordinate_warnings(self) -> list[str]:
        """CrystFEL's messages about peak coordinates it could not place on a panel."""
        return [line for line in self.stderr.splitlines() if any(w in line for w in COORDINATE_WARNINGS)]

    @property
    def indexed(self) -> int:
        return sum(1 for found in self.crystals.values() if found)


def read_stream(path: str | Path) -> dict[tuple[str, int], list[np.ndarray]]:
    """Per event of a CrystFEL stream, the reciprocal bases of its crystals (1/Angstrom)."""
    crystals: dict[tuple[str, int], list[np.ndarray]] = {}
    key: tuple[str, int] | None = None
    filename = ""
    vectors: dict[str, list[float]] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith("Image filename: "):
            filename = line.split(": ", 1)[1].strip()
        elif line.startswith("Event: "):
            key = (filename, int(line.split("//", 1)[1]))
            crystals.setdefault(key, [])
        elif (match := _VECTOR.match(line)) and key is not None:
            vectors[match.group(1)] = [float(match.group(i)) for i in (2, 3, 4)]
            if len(vectors) == 3:
                crystals[key].append(np.array([vectors["a"], vectors["b"], vectors["c"]]) / 10.0)
                vectors = {}
    return crystals


def misorientation_deg(found: np.ndarray, true: np.ndarray) -> float:
    """Rotation (degrees) between a found reciprocal basis and the true one, after the integer
    re-indexing (``det = +-1``: a Friedel mate counts) that maps one onto the other; ``inf`` when
    none does (another lattice, or the mirror image).

    Args:
        found, true: (3, 3) rows a*, b*, c* in the lab frame (the same length unit).
    """
    transform = np.rint(found @ np.linalg.inv(true))
    if abs(abs(np.linalg.det(transform)) - 1.0) > 1e-6:
        return float("inf")
    rotation = np.linalg.solve(transform @ true, found)  # found = (T true) R
    u, _, vt = np.linalg.svd(rotation)
    nearest = u @ vt
    if np.linalg.det(nearest) < 0:  # a mirror image: another hand
        return float("inf")
    cosine = (np.trace(nearest) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def run_indexamajig(
    events: Iterable[tuple[str | Path, int]],
    geometry: str | Path,
    cell: str | Path,
    out_dir: str | Path,
    name: str,
    *,
    peaks: str = "cxi",
    indexing: str = "asdf",
    options: Sequence[str] = (),
    jobs: int = 2,
    timeout_s: float = 1800.0,
    bin_dir: Path | None = None,
) -> IndexingRun:
    """Index ``events`` (``(file, frame)``) with ``indexamajig`` and read back its stream.

    ``peaks`` is indexamajig's ``--peaks`` (``cxi`` reads our files' peak lists, ``peakfinder8``
    searches the frames itself); ``options`` are passed on as they are.
    """
    folder = bin_dir or crystfel_bin()
    if folder is None:
        raise FileNotFoundError("CrystFEL's indexamajig not found (set CRYSTFEL_BIN or put it on PATH)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = out_dir / f"{name}.lst"
    listing.write_text("".join(f"{Path(f).resolve()} //{int(i)}\n" for f, i in events))
    stream = out_dir / f"{name}.stream"
    command = [
        str(folder / "indexamajig"),
        "-i",
        str(listing),
        "-g",
        str(geometry),
        "-p",
        str(cell),
        "-o",
        str(stream),
        f"--peaks={peaks}",
        f"--indexing={indexing}",
        "-j",
        str(jobs),
        *options,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=out_dir)
    seconds = time.perf_counter() - start
    (out_dir / f"{name}.log").write_text(done.stderr)
    crystals = read_stream(stream) if stream.is_file() else {}
    return IndexingRun(stream, crystals, done.stderr, seconds, done.returncode, command)
