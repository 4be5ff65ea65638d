"""Peak matching as the field scores peak finders.

Found peaks are assigned one-to-one to strong truth peaks on the same panel within ``radius``
pixels (a maximum-cardinality, minimum-distance assignment: Hungarian algorithm on a cost matrix
where pairs beyond the radius cost more than any full set of allowed pairs). Unassigned found
peaks within ``radius`` of a weak truth peak are excused: they count neither as true nor as false
positives, and so are those on an optional excused region (the pixels of weak spots and of
blobs of merged spots). Everything else unassigned is a false positive; unassigned strong peaks
are misses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

MATCH_RADIUS = 2.0


@dataclass(frozen=True)
class MatchCounts:
    """Counts of one or many frames; add them with ``+``."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    excused: int = 0

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.excused + other.excused)

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1 when nothing was found."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1 when there was nothing to find."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "excused": self.excused,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def _as_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return points


def assign_within_radius(
    found: np.ndarray, truth: np.ndarray, radius: float = MATCH_RADIUS
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one assignment of points within ``radius`` on the same panel.

    Args:
        found: (N, 3) rows (panel, ss, fs).
        truth: (M, 3) rows (panel, ss, fs).

    Returns:
        ``(found_index, truth_index)``: (K,) int64 matched pairs, K maximal, then total distance
        minimal.
    """
    found, truth = _as_points(found), _as_points(truth)
    empty = np.zeros(0, dtype=np.int64)
    if len(found) == 0 or len(truth) == 0:
        return empty, empty
    rows, cols = [], []
    for panel in np.intersect1d(found[:, 0], truth[:, 0]):
        fi = np.flatnonzero(found[:, 0] == panel)
        ti = np.flatnonzero(truth[:, 0] == panel)
        dist = np.hypot(found[fi, None, 1] - truth[None, ti, 1], found[fi, None, 2] - truth[None, ti, 2])
        allowed = dist <= radius
        if not allowed.any():
            continue
        # Restrict to rows/cols that have any allowed pair: keeps the matrices small.
        r_any, c_any = np.flatnonzero(allowed.any(axis=1)), np.flatnonzero(allowed.any(axis=0))
        sub = dist[np.ix_(r_any, c_any)]
        penalty = radius * (min(sub.shape) + 1) + 1.0
        cost = np.where(sub <= radius, sub, penalty)
        r, c = linear_sum_assignment(cost)
        ok = sub[r, c] <= radius
        rows.append(fi[r_any[r[ok]]])
        cols.append(ti[c_any[c[ok]]])
    if not rows:
        return empty, empty
    return np.concatenate(rows), np.concatenate(cols)


def _inside(points: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(N,) bool: the pixel nearest each (panel, ss, fs) point lies in ``region`` (P, ss, fs)."""
    index = np.rint(points).astype(np.int64)
    valid = np.all((index >= 0) & (index < np.array(region.shape)), axis=1)
    inside = np.zeros(len(points), dtype=bool)
    inside[valid] = region[tuple(index[valid].T)]
    return inside


def match_peaks(
    found: np.ndarray,
    strong: np.ndarray,
    weak: np.ndarray | None = None,
    radius: float = MATCH_RADIUS,
    excused_region: np.ndarray | None = None,
) -> MatchCounts:
    """Score one frame.

    Args:
        found: (N, 3) detected peaks (panel, ss, fs).
        strong: (M, 3) strong truth peaks (must be found).
        weak: (K, 3) weak truth peaks (detections near them are excused), or None.
        radius: match radius in pixels.
        excused_region: (P, ss, fs) bool pixels where an unassigned detection (its nearest pixel)
            is excused too, e.g. the pixels of weak spots and of blobs of merged spots; or None.

    Returns:
        :class:`MatchCounts` of the frame.
    """
    found, strong = _as_points(found), _as_points(strong)
    f_idx, _ = assign_within_radius(found, strong, radius)
    unmatched = np.setdiff1d(np.arange(len(found)), f_idx)
    excused = np.zeros(len(unmatched), dtype=bool)
    if weak is not None and len(unmatched):
        weak = _as_points(weak)
        for panel in np.unique(found[unmatched, 0]):
            sel = found[unmatched, 0] == panel
            w = weak[weak[:, 0] == panel]
            if len(w):
                pts = found[unmatched[sel]]
                d = np.hypot(pts[:, None, 1] - w[None, :, 1], pts[:, None, 2] - w[None, :, 2])
                excused[sel] = (d <= radius).any(axis=1)
    if excused_region is not None and len(unmatched):
        excused |= _inside(found[unmatched], excused_region)
    tp, n_excused = len(f_idx), int(excused.sum())
    return MatchCounts(tp=tp, fp=len(unmatched) - n_excused, fn=len(strong) - tp, excused=n_excused)


def position_errors(found: np.ndarray, truth: np.ndarray, radius: float = MATCH_RADIUS) -> np.ndarray:
    """Distances (pixels) between the found peaks and the truth peaks they are assigned to.

    Args:
        found: (N, 3) detected peaks (panel, ss, fs).
        truth: (M, 3) truth peaks (panel, ss, fs), e.g. the strong ones of a frame.

    Returns:
        (K,) float64, one per pair of :func:`assign_within_radius` (each at most ``radius``).
    """
    found, truth = _as_points(found), _as_points(truth)
    f_idx, t_idx = assign_within_radius(found, truth, radius)
    return np.hypot(found[f_idx, 1] - truth[t_idx, 1], found[f_idx, 2] - truth[t_idx, 2])


def position_summary(errors: np.ndarray) -> dict[str, float | int | None]:
    """``pairs``, ``median``, ``mean`` and ``p90`` of (K,) position errors (pixels; None when K = 0)."""
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if errors.size == 0:
        return {"pairs": 0, "median": None, "mean": None, "p90": None}
    return {
        "pairs": int(errors.size),
        "median": float(np.median(errors)),
        "mean": float(errors.mean()),
        "p90": float(np.quantile(errors, 0.9)),
    }


def peak_list_agreement(a: np.ndarray, b: np.ndarray, radius: float = 1.0) -> float:
    """Share of peaks two finders agree on: matched pairs / size of the union (1 if both empty).

    Args:
        a, b: (N, 3) and (M, 3) peak lists (panel, ss, fs), e.g. float32 vs bf16 results.
    """
    a, b = _as_points(a), _as_points(b)
    if len(a) == 0 and len(b) == 0:
        return 1.0
    matched = len(assign_within_radius(a, b, radius)[0])
    return matched / (len(a) + len(b) - matched)
