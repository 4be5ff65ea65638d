"""What the evaluation commands share: the model's finder in each precision, the peakfinder8
baseline beside it, their per-detector scores, the common options, the run itself (seed, worker,
report files) and the markdown table of a report.

:mod:`peaknet_serve.eval.evaluate` (peaksim frames), :mod:`peaknet_serve.eval.independent` (frames
of the independent simulator) and :mod:`peaknet_serve.eval.patternsim` (CrystFEL pattern_sim
spots) differ in where frames come from and what else they measure; each builds its report with
:class:`ModelScores` and :class:`BaselineScores` and runs through :func:`run_evaluation`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.device.finder import PanelPeakFinder
from peaknet_serve.eval.peakfinder8 import (
    DEFAULT_GRID,
    Peakfinder8,
    Pf8Frame,
    Scorer,
    TuneResult,
    baseline_cells,
    baseline_entry,
    describe,
    model_ms,
    score,
    tune,
)
from peaknet_serve.pipeline import build_finder
from peaknet_serve.resources import BUNDLED_MODEL_CONFIG
from peaknet_serve.results import write_report
from peaknet_serve.sim.peaksim.matching import MatchCounts, assign_within_radius, position_errors, position_summary

DEFAULT_CONFIG = BUNDLED_MODEL_CONFIG
AGREEMENT_RADIUS = 1.0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def evaluation_finder(
    config: Path, dtype: str, device: torch.device, threshold: float | None, max_batch: int
) -> PanelPeakFinder:
    """The server's finder (:func:`~peaknet_serve.pipeline.build_finder`) in precision ``dtype``:
    what is scored is what is served (autocast on CUDA, eager; ``PEAKNET_PRECISION`` is not read)."""
    settings = HandlerSettings(
        config=str(config), precision=dtype, threshold=threshold, max_batch_panels=max_batch, warmup=False
    )
    return build_finder(settings, device, mode=ServingMode.from_settings(settings, device, env={})).finder


def find_frame_peaks(finder: PanelPeakFinder, raw: np.ndarray, good_pixels: np.ndarray | None = None) -> np.ndarray:
    """Peaks of one frame as the server finds them.

    Args:
        raw: (P, H, W) frame in its stored dtype (float32 ADU or uint16).
        good_pixels: (P, H, W) bad-pixel mask, non-zero = good (the frame's ``mask``), or None.

    Returns:
        (K, 3) float64 rows (panel, ss, fs).
    """
    panels = torch.from_numpy(np.ascontiguousarray(raw)).to(finder.device)
    good = None if good_pixels is None else torch.from_numpy(np.asarray(good_pixels) != 0).to(finder.device)
    table = finder.find(panels, good_pixels=good).table.to_host()
    return np.stack([table.image_index, table.ss, table.fs], axis=1).astype(np.float64)


def agreement_counts(reference: np.ndarray, other: np.ndarray, radius: float = AGREEMENT_RADIUS) -> dict[str, int]:
    """Matched / only-in-reference / only-in-other peak counts of two (K, 3) float64 peak lists."""
    matched = len(assign_within_radius(reference, other, radius)[0])
    return {"matched": matched, "only_reference": len(reference) - matched, "only_other": len(other) - matched}


def agreement_summary(counts: dict[str, int]) -> dict[str, float]:
    """``counts`` of :func:`agreement_counts` with ``agreement``: matched / union (1 for two empty lists)."""
    union = counts["matched"] + counts["only_reference"] + counts["only_other"]
    return {**counts, "agreement": counts["matched"] / union if union else 1.0}


@dataclass(frozen=True)
class ModelOptions:
    """What every evaluation runs the model with: the options of :func:`evaluation_parser`.

    Attributes:
        config: the PeakNet YAML.
        geometries: detectors to simulate, in report order.
        frames: scored frames per detector.
        dtypes: precisions, the reference first (none: peakfinder8 alone).
        seed: the first word of every frame's seed sequence.
        threshold: P(peak) threshold (None: argmax).
        max_batch: panels per forward pass.
        bad_pixel_mask: give the model each frame's bad-pixel mask (the one peakfinder8 gets), as
            a server configured with the detector's mask applies it; False (default, the server's
            default): none.
    """

    config: Path
    geometries: list[str]
    frames: int
    dtypes: list[str]
    device: torch.device
    seed: int
    threshold: float | None = None
    max_batch: int = 16
    bad_pixel_mask: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        return cls(
            args.config,
            args.geometries,
            args.frames,
            args.dtypes,
            torch.device(args.device),
            args.seed,
            args.threshold,
            args.max_batch,
            args.bad_pixel_mask,
        )

    def good_pixels(self, mask: np.ndarray) -> np.ndarray | None:
        """What the model gets of a frame's (P, H, W) bad-pixel ``mask``: the mask, or None."""
        return mask if self.bad_pixel_mask else None

    def finders(self) -> dict[str, PanelPeakFinder]:
        """The server's finder in each precision (:func:`evaluation_finder`)."""
        return {
            name: evaluation_finder(self.config, name, self.device, self.threshold, self.max_batch)
            for name in self.dtypes
        }


def device_fields(device: torch.device) -> dict[str, str]:
    """A report's ``device``, ``torch`` and ``device_name`` entries."""
    return {
        "device": str(device),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def reference_dtype(dtypes: Sequence[str]) -> str:
    """The dtype the others are compared with: the first (float32 where none runs: peakfinder8 alone)."""
    return dtypes[0] if dtypes else "float32"


def median_error_text(errors: list[np.ndarray]) -> str:
    """``, median position error 0.123 px`` of a list of (K,) position errors; empty without any."""
    if not errors:
        return ""
    median = position_summary(np.concatenate(errors))["median"]
    return ", median position error —" if median is None else f", median position error {median:.3f} px"


def position_error_columns(reference: str, baseline: bool) -> list[Column]:
    """``position error px <reference>`` (and ``... peakfinder8`` with a baseline): the median distance
    of the matched peaks from the truth centres, a dash where an entry has none."""

    def cell(entry: dict | None) -> str:
        median = ((entry or {}).get("position_error_px") or {}).get("median")
        return "—" if median is None else f"{median:.3f}"

    columns: list[Column] = [(f"position error px {reference}", lambda entry: cell(entry["accuracy"][reference]))]
    if baseline:
        columns.append(("position error px peakfinder8", lambda entry: cell(entry.get("peakfinder8"))))
    return columns


class ModelScores:
    """The model's scores in each precision: pooled counts, seconds in the finder, per-frame F1 and
    the agreement of each reduced precision's peak lists with the reference's.

    Args:
        dtypes: precisions, the reference first.
    """

    def __init__(self, dtypes: Sequence[str]) -> None:
        self.dtypes = list(dtypes)
        self.counts = {name: MatchCounts() for name in self.dtypes}
        self.seconds = dict.fromkeys(self.dtypes, 0.0)
        self.frame_f1: dict[str, list[float]] = {name: [] for name in self.dtypes}
        self.agree = {name: {"matched": 0, "only_reference": 0, "only_other": 0} for name in self.dtypes[1:]}
        self.position_errors: dict[str, list[np.ndarray]] = {name: [] for name in self.dtypes}

    def score(
        self,
        finders: dict[str, PanelPeakFinder],
        raw: np.ndarray,
        scorer: Scorer,
        keep_f1: bool = True,
        record: dict | None = None,
        truth: np.ndarray | None = None,
        good_pixels: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one frame through each precision's finder and score it.

        Args:
            raw: (P, H, W) frame as the model gets it (float32 ADU or uint16).
            good_pixels: (P, H, W) bad-pixel mask the model gets (non-zero = good), or None.
            scorer: the frame's rule, (K, 3) float64 peaks -> counts.
            keep_f1: count the frame's F1 in ``mean_frame_f1``.
            record: where each precision's counts of this frame go, when given.
            truth: (M, 3) float64 truth peak centres (panel, ss, fs); when given, the distances of
                the found peaks assigned to them are kept (:func:`position_errors`).

        Returns:
            Each precision's (K, 3) float64 peaks (panel, ss, fs).
        """
        found = {}
        for name in self.dtypes:
            t0 = time.perf_counter()
            found[name] = find_frame_peaks(finders[name], raw, good_pixels)
            self.seconds[name] += time.perf_counter() - t0
            result = scorer(found[name])
            self.counts[name] = self.counts[name] + result
            if keep_f1:
                self.frame_f1[name].append(result.f1)
            if record is not None:
                record[name] = result.as_dict()
            if truth is not None:
                self.position_errors[name].append(position_errors(found[name], truth))
        for name in self.dtypes[1:]:
            for key, value in agreement_counts(found[self.dtypes[0]], found[name]).items():
                self.agree[name][key] += value
        return found

    def add(self, other: ModelScores) -> None:
        """Pool ``other`` (another detector's scores) into these."""
        for name in self.dtypes:
            self.counts[name] = self.counts[name] + other.counts[name]
            self.seconds[name] += other.seconds[name]
            self.frame_f1[name] += other.frame_f1[name]
            self.position_errors[name] += other.position_errors[name]
        for name in self.dtypes[1:]:
            for key, value in other.agree[name].items():
                self.agree[name][key] += value

    def accuracy(self, frames: int | None = None, mean_frame_f1: bool = False) -> dict[str, dict]:
        """Per precision: the counts, then ``mean_frame_f1`` (None without frames) where asked, then
        ``position_error_px`` (:func:`position_summary`) where truth centres were given, then
        ``seconds`` and ``ms_per_frame`` over ``frames`` where given."""
        out = {}
        for name in self.dtypes:
            entry: dict = self.counts[name].as_dict()
            if mean_frame_f1:
                entry["mean_frame_f1"] = float(np.mean(self.frame_f1[name])) if self.frame_f1[name] else None
            if self.position_errors[name]:
                entry["position_error_px"] = position_summary(np.concatenate(self.position_errors[name]))
            if frames is not None:
                entry["seconds"] = self.seconds[name]
                entry["ms_per_frame"] = 1e3 * self.seconds[name] / max(frames, 1)
            out[name] = entry
        return out

    def agreement(self) -> dict[str, dict[str, float]]:
        """Per reduced precision, :func:`agreement_summary` of its peak lists with the reference's."""
        return {name: agreement_summary(self.agree[name]) for name in self.dtypes[1:]}

    def summary(self, agreement: bool = False) -> str:
        """One line of text: F1 (P, R) per precision, and the agreements where asked."""
        text = ", ".join(
            f"{n} F1={self.counts[n].f1:.4f} (P={self.counts[n].precision:.4f} R={self.counts[n].recall:.4f}"
            f"{median_error_text(self.position_errors[n])})"
            for n in self.dtypes
        )
        if agreement:
            text += "".join(f"; {n} agreement={a['agreement']:.4f}" for n, a in self.agreement().items())
        return text


class BaselineScores:
    """peakfinder8 beside the model, per detector: tuned on a few frames, then scored frame by
    frame; pools the counts over detectors. Does nothing without a worker.

    Args:
        finder: the running worker, or None (no baseline).
    """

    def __init__(self, finder: Peakfinder8 | None) -> None:
        self.finder = finder
        self.total = MatchCounts()
        self.tuned: TuneResult | None = None
        self.counts = MatchCounts()
        self.ms: list[float] = []
        self.position_errors: list[np.ndarray] = []
        self.total_position_errors: list[np.ndarray] = []

    @property
    def active(self) -> bool:
        """Whether a detector's parameters are tuned (frames are to be scored)."""
        return self.tuned is not None

    def header(self, tune_frames: int, tune_first_frame: int) -> dict | None:
        """The report's ``peakfinder8`` entry (None without a worker)."""
        if self.finder is None:
            return None
        return {
            **self.finder.version(),
            "tune_frames": tune_frames,
            "tune_first_frame": tune_first_frame,
            "grid_points": len(DEFAULT_GRID),
        }

    def start(self, detector: str, tuning: Iterable[tuple[Pf8Frame, Scorer]]) -> None:
        """Begin a detector: tune on ``tuning`` (read only with a worker, so it may be lazy)."""
        self.tuned, self.counts, self.ms, self.position_errors = None, MatchCounts(), [], []
        if self.finder is not None:
            self.tuned = tune(self.finder, list(tuning))
            print(f"{detector}: peakfinder8 tuned ({describe(self.tuned.as_dict()['best'])})", flush=True)

    def score(
        self, frame: Pf8Frame, scorer: Scorer, record: dict | None = None, truth: np.ndarray | None = None
    ) -> MatchCounts:
        """Score one held-out frame with the tuned parameters (only while :attr:`active`); with
        ``truth`` (M, 3) centres, keep the position errors of its peaks as :class:`ModelScores` does."""
        result, found = score(self.finder, frame, scorer, self.tuned.best)
        self.counts = self.counts + result
        self.ms.append(found.ms)
        if truth is not None:
            self.position_errors.append(position_errors(found.peaks, truth))
        if record is not None:
            record["peakfinder8"] = result.as_dict()
        return result

    def finish(self) -> dict | None:
        """The detector's entry (:func:`~peaknet_serve.eval.peakfinder8.baseline_entry`), pooled
        into the total; None without a worker."""
        if self.tuned is None:
            return None
        self.total = self.total + self.counts
        self.total_position_errors += self.position_errors
        entry = baseline_entry(self.tuned, self.counts, self.ms)
        if self.position_errors:
            entry["position_error_px"] = position_summary(np.concatenate(self.position_errors))
        return entry

    def summary(self) -> str:
        """The detector's ``; peakfinder8 F1=... (P=... R=...)`` text (empty without a worker)."""
        if self.tuned is None:
            return ""
        c = self.counts
        return (
            f"; peakfinder8 F1={c.f1:.4f} (P={c.precision:.4f} R={c.recall:.4f}"
            f"{median_error_text(self.position_errors)})"
        )

    def overall(self) -> dict | None:
        """The report's ``overall.peakfinder8`` entry (None without a worker)."""
        if self.finder is None:
            return None
        entry: dict = {"accuracy": self.total.as_dict()}
        if self.total_position_errors:
            entry["position_error_px"] = position_summary(np.concatenate(self.total_position_errors))
        return entry


def evaluation_parser(
    description: str,
    detectors: Sequence[str],
    frames: int,
    frames_help: str,
    dtypes: Sequence[str],
    dtypes_help: str,
    seed: int,
) -> argparse.ArgumentParser:
    """A command's parser with the options every evaluation takes (model, detectors, frames,
    precisions, device, seed, threshold and batch: :class:`ModelOptions`), with its defaults."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="PeakNet YAML (public pipeline layout)")
    p.add_argument("--geometries", nargs="+", default=sorted(detectors), choices=sorted(detectors))
    p.add_argument("--frames", type=int, default=frames, help=frames_help)
    p.add_argument("--dtypes", nargs="+", default=list(dtypes), choices=list(DTYPES), help=dtypes_help)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--threshold", type=float, default=None, help="P(peak) threshold; default argmax")
    p.add_argument("--max-batch", type=int, default=16, help="panels per forward pass")
    p.add_argument(
        "--bad-pixel-mask",
        action="store_true",
        help="give the model each frame's bad-pixel mask, as peakfinder8 gets it and as a server "
        "configured with the detector's mask (bad_pixel_mask) applies it; default: the network alone",
    )
    return p


def add_peakfinder8_args(p: argparse.ArgumentParser) -> None:
    """The baseline's options, shared by the evaluations."""
    p.add_argument(
        "--peakfinder8",
        action="store_true",
        help="score OM's peakfinder8 beside the model (needs `make pf8-venv` or $PEAKNET_PF8_PYTHON)",
    )
    p.add_argument("--pf8-tune-frames", type=int, default=3, help="frames per detector for peakfinder8's grid search")
    p.add_argument(
        "--pf8-tune-first-frame",
        type=int,
        default=5000,
        help="index of the first tuning frame (disjoint from the scored frames)",
    )
    p.add_argument("--pf8-python", type=Path, default=None, help="Python of peakfinder8's environment")
    p.add_argument(
        "--baseline-only",
        action="store_true",
        help="score peakfinder8 alone (no model) and write <report>_peakfinder8.json, for "
        "peaknet-evaluate-merge to join with a model's report on the same frames",
    )


def check_baseline_only(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--baseline-only`` needs ``--peakfinder8`` and runs no model."""
    if args.baseline_only:
        if not args.peakfinder8:
            p.error("--baseline-only needs --peakfinder8")
        args.dtypes = []


def run_evaluation(
    program: str,
    args: argparse.Namespace,
    argv: list[str] | None,
    name: str,
    evaluate: Callable[[ModelOptions, Peakfinder8 | None], dict],
    table: Callable[[dict], str],
    plot: Callable[[dict, Path], None] | None = None,
) -> int:
    """Run an evaluation command: seed torch, start peakfinder8's worker where asked, build the
    report with ``evaluate(ModelOptions.from_args(args), worker)`` and write it into ``args.out``.

    Writes ``<name>.json``, ``<name>.png`` (with ``plot``) and ``<name>.md`` (``table`` and the
    command), or only ``<name>_peakfinder8.json`` with ``--baseline-only``; prints the overall
    scores. Returns the exit status.
    """
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(Peakfinder8(args.pf8_python)) if args.peakfinder8 else None
        report = evaluate(ModelOptions.from_args(args), worker)
    command = " ".join([program, *(argv if argv is not None else sys.argv[1:])])
    report["command"] = command
    if args.baseline_only:
        (args.out / f"{name}_peakfinder8.json").write_text(json.dumps(report, indent=1))
        return 0
    write_report(args.out, name, report, table(report), f"`{command}`", plot)
    print(json.dumps(report["overall"], indent=1))
    return 0


def save_figure(fig, title: str, path: Path) -> None:
    """Title, lay out and write a report's matplotlib figure to ``path`` (PNG), then close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


Column = tuple[str, Callable[[dict], str]]


def f1_cell(accuracy: dict) -> str:
    """``F1 (P / R)`` of one accuracy entry."""
    return f"{accuracy['f1']:.3f} ({accuracy['precision']:.3f} / {accuracy['recall']:.3f})"


def per_frame_cell(key: str) -> Callable[[dict], str]:
    """A cell of ``entry[key]`` to one decimal (a dash where the entry has none, as ``overall``)."""
    return lambda entry: f"{entry[key]:.1f}" if key in entry else "—"


def f1_columns(dtypes: Sequence[str]) -> list[Column]:
    """``F1 <dtype> (P / R)`` for each precision."""
    return [(f"F1 {d} (P / R)", lambda entry, d=d: f1_cell(entry["accuracy"][d])) for d in dtypes]


def agreement_columns(dtypes: Sequence[str], reference: str) -> list[Column]:
    """``<dtype> = <reference>``: the peak-list agreement of each reduced precision, in percent."""

    def cell(entry: dict, d: str) -> str:
        agreement = entry.get("agreement_with_" + reference, {})
        return f"{100 * agreement[d]['agreement']:.2f}%" if d in agreement else "—"

    return [(f"{d} = {reference}", lambda entry, d=d: cell(entry, d)) for d in dtypes if d != reference]


def detector_table(report: dict, columns: Sequence[Column]) -> list[str]:
    """Markdown lines of a report's table: a row per detector and one for ``overall``, the
    detector's name and then ``columns``; where the report holds peakfinder8, its F1 (P / R) and
    the milliseconds per frame of the reference precision and of peakfinder8 follow."""
    reference = report["reference_dtype"]
    columns = list(columns)
    if "peakfinder8" in report:
        frames = report["frames_per_geometry"]
        columns += [
            ("F1 peakfinder8 (P / R)", lambda entry: baseline_cells(entry.get("peakfinder8"))[0]),
            (f"ms/frame {reference}", lambda entry: model_ms(entry["accuracy"][reference], frames)),
            ("ms/frame peakfinder8", lambda entry: baseline_cells(entry.get("peakfinder8"))[1]),
        ]
    header = ["detector", *(title for title, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, entry in [*report["per_geometry"].items(), ("overall", report["overall"])]:
        cells = [f"**{name}**" if name == "overall" else name, *(cell(entry) for _, cell in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def tuned_parameters(report: dict) -> str:
    """``<detector> <parameters>; ...``: peakfinder8's tuned set per detector."""
    return "; ".join(
        f"{g} {describe(e['peakfinder8']['best'])}" for g, e in report["per_geometry"].items() if "peakfinder8" in e
    )


def mask_note(report: dict) -> str:
    """Whether the report's model got each frame's bad-pixel mask (reports without the key did not)."""
    if report.get("model_bad_pixel_mask", False):
        return "the model gets each frame's bad-pixel mask, as peakfinder8 does"
    return "the model gets no bad-pixel mask (peakfinder8 gets each frame's)"


def tuning_note(report: dict) -> str:
    """How peakfinder8 was tuned, and the sets it chose (a sentence ending in a colon-led list)."""
    pf8 = report["peakfinder8"]
    return (
        f"peakfinder8: OM {pf8['om']}, tuned per detector on {pf8['tune_frames']} frames (indices "
        f"{pf8['tune_first_frame']}+) over {pf8['grid_points']} parameter sets, best pooled F1: "
        + tuned_parameters(report)
    )
