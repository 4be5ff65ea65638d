#!/usr/bin/env python3
"""Find the Bragg peaks of a whole run: stream CXI/HDF5 files through the PeakNet server.

For every input file (or every ``*.cxi``/``*.h5``/``*.hdf5`` in a given folder) the frames are
read in chunks of ``--frames-per-request``, sent to the server ``--concurrency`` requests at a
time, and the peaks are written to ``<output-dir>/<name>_peaks.cxi``, a file CrystFEL's
``indexamajig --peaks=cxi`` indexes on its own (:mod:`peaknet_serve.encode.cxi`):

    /entry_1/result_1/nPeaks                  (N,)        int32
    /entry_1/result_1/peakXPosRaw             (N, 2048)   float32  fast-scan position (fs)
    /entry_1/result_1/peakYPosRaw             (N, 2048)   float32  panel * H + ss (panels stacked)
    /entry_1/result_1/peakTotalIntensity      (N, 2048)   float32  background-subtracted ADU
    /entry_1/result_1/peakTotalIntensityRaw   (N, 2048)   float32  raw ADU sum
    /entry_1/result_1/peakNPixels             (N, 2048)   float32  pixels in the peak
    /entry_1/data_1/data                      (N, P*H, W) virtual slab over the input frames
    /entry_1/data_1/mask                      (P*H, W)    uint8, 1 = good (the input's, if it has one)

Where the input has a bad-pixel mask (``mask`` next to the frames, or ``/entry_1/data_1/mask``;
non-zero = good, one for every frame or one per frame), each request carries its part for the
request's frames, so the server leaves the bad pixels out of the peaks (``--no-mask``: it does not).

Frames, mask and peaks share one slab layout, that of the shipped geometry files
(``peaknet-geometry``). The frames stay in the input file: the virtual dataset names it by its path
relative to the output folder, so moving the run (inputs and peaks together) keeps the link.
Positions are pixel-index coordinates (the centre of the first pixel is 0.0), the Cheetah
convention that CrystFEL's default half-pixel shift expects. Each output is written under a
temporary name and renamed when complete, so a run can be stopped and started again: finished
inputs are skipped (``--overwrite`` redoes them).

    peaknet-peakfind /data/run0042/ --output-dir peaks/ --key-file key_file.json
    peaknet-geometry --detector epix10k2m --clen 0.12 --energy 9.5 -o epix10k2m.geom
    indexamajig -i peaks/peaks.lst -g epix10k2m.geom --peaks=cxi -p cell.cell -o run0042.stream ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peaknet_serve.clients.client import PeakNetClient, ServerError
from peaknet_serve.clients.payloads import (
    ENCODINGS,
    file_frames_shape,
    iter_frames,
)
from peaknet_serve.encode.cxi import (
    CXI_MAX_PEAKS,
    RESULT_GROUP,
    FrameSource,
    cxi_peaks,
    input_mask,
    write_peak_file,
)
from peaknet_serve.wire import DEFAULT_DATASET, DEFAULT_URL

INPUT_SUFFIXES = (".cxi", ".h5", ".hdf5")
OUTPUT_SUFFIX = "_peaks.cxi"

# (frames) or (frames, mask=good pixels) -> the JSON answer
Predict = Callable[..., dict[str, Any]]


class PeakfindError(RuntimeError):
    """A file could not be processed (server refused a chunk, bad input)."""


# --------------------------------------------------------------------------------------------
# inputs and outputs
# --------------------------------------------------------------------------------------------


def discover_inputs(paths: Iterable[str | Path], recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """Input files: files as given, folders expanded to their CXI/HDF5 files, sorted, no repeats.

    Files inside ``exclude`` (the output folder) and earlier outputs (``*_peaks.cxi``) are left out.
    """
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_dir():
            candidates = sorted(path.rglob("*") if recursive else path.iterdir())
            files = [p for p in candidates if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES]
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
        for file in files:
            resolved = file.resolve()
            inside_output = exclude is not None and resolved.is_relative_to(exclude.resolve())
            if not inside_output and not file.name.endswith(OUTPUT_SUFFIX):
                found.setdefault(resolved)
    return list(found)


def output_paths(inputs: Sequence[Path], output_dir: Path) -> list[Path]:
    """``<output_dir>/<stem>_peaks.cxi`` per input; two inputs may not share a name."""
    outputs = [output_dir / f"{p.stem}{OUTPUT_SUFFIX}" for p in inputs]
    seen: dict[Path, Path] = {}
    for source, out in zip(inputs, outputs):
        if out in seen:
            raise ValueError(f"{seen[out]} and {source} would both write {out}")
        seen[out] = source
    return outputs


def is_complete(path: Path, n_frames: int) -> bool:
    """Whether ``path`` is a finished peak file for ``n_frames`` frames."""
    import h5py

    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False)) and f[f"{RESULT_GROUP}/nPeaks"].shape == (n_frames,)
    except (OSError, KeyError):
        return False


@dataclass(frozen=True)
class FileMask:
    """The bad-pixel mask of an input file's frames (non-zero = good), as requests send it.

    Attributes:
        path: the input file.
        dataset: the mask's dataset in it.
        view: ``(N, P, H, W)``, how the frames are read.
        static: bool ``(P, H, W)``, the one mask of every frame (read once), or None for a
            per-frame mask, read chunk by chunk.
    """

    path: Path
    dataset: str
    view: tuple[int, ...]
    static: np.ndarray | None

    @property
    def per_frame(self) -> bool:
        """One mask per frame (``(N, ...)``), else one for every frame."""
        return self.static is None

    def rows(self, first: int, last: int) -> np.ndarray:
        """The mask of frames ``first .. last - 1``: bool ``(P, H, W)`` for a static mask,
        ``(last - first, P, H, W)`` for a per-frame one."""
        if self.static is not None:
            return self.static
        import h5py

        _, panels, height, width = self.view
        with h5py.File(self.path, "r") as f:
            values = f[self.dataset][first:last]
        return np.ascontiguousarray(values).reshape(last - first, panels, height, width) != 0


def file_mask(path: Path, dataset: str = DEFAULT_DATASET, panels: int | None = None) -> FileMask | None:
    """The mask next to ``dataset`` of ``path`` (:func:`~peaknet_serve.encode.cxi.input_mask`), or None."""
    import h5py

    view = tuple(file_frames_shape(path, dataset, panels))
    with h5py.File(path, "r") as f:
        found = input_mask(f, dataset, view)
        if found is None:
            return None
        name, per_frame = found
        static = None if per_frame else np.ascontiguousarray(f[name][()]).reshape(view[1:]) != 0
    return FileMask(Path(path), name, view, static)


# --------------------------------------------------------------------------------------------
# one file, a run
# --------------------------------------------------------------------------------------------


@dataclass
class FileResult:
    """What happened to one input."""

    source: str
    output: str
    status: str  # "done", "skipped", "failed"
    frames: int = 0
    hits: int = 0
    peaks: int = 0
    truncated_frames: int = 0
    seconds: float = 0.0
    error: str | None = None


def process_file(
    source: Path,
    output: Path,
    predict: Predict,
    dataset: str = DEFAULT_DATASET,
    panels: int | None = None,
    frames_per_request: int = 4,
    concurrency: int = 4,
    min_peaks: int = 10,
    on_frames: Callable[[int], None] = lambda n: None,
    send_mask: bool = True,
) -> FileResult:
    """Send every frame of ``source`` through ``predict`` and write ``output``.

    With ``send_mask`` and a mask in ``source`` (:func:`file_mask`) each chunk goes as
    ``predict(frames, mask=...)``, else ``predict(frames)``. At most ``2 * concurrency`` chunks are
    read ahead of the answers, so memory stays bounded whatever the file size. Answers are put
    back in frame order before writing.
    """
    start = time.perf_counter()
    mask = file_mask(source, dataset, panels) if send_mask else None
    answers: dict[int, list[dict[str, Any]]] = {}
    server: dict[str, Any] = {}
    pending: deque[tuple[int, Future[dict[str, Any]]]] = deque()
    view: tuple[int, ...] = ()

    def collect(first: int, future: Future[dict[str, Any]]) -> None:
        document = future.result()
        answers[first] = document["frames"]
        server.setdefault("model", document.get("model"))
        server.setdefault("precision", document.get("precision"))
        server.setdefault("device", document.get("device"))
        server.setdefault("bad_pixel_mask", document.get("bad_pixel_mask"))
        on_frames(len(document["frames"]))

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="peakfind") as pool:
        try:
            for first, frames in iter_frames(source, dataset, frames_per_request, panels):
                view = (0, *frames.shape[1:])
                if mask is None:
                    pending.append((first, pool.submit(predict, frames)))
                else:
                    good = mask.rows(first, first + frames.shape[0])
                    pending.append((first, pool.submit(predict, frames, mask=good)))
                while len(pending) >= 2 * concurrency:
                    collect(*pending.popleft())
            while pending:
                collect(*pending.popleft())
        except BaseException:
            for _, future in pending:
                future.cancel()
            raise

    frames_json = [frame for first in sorted(answers) for frame in answers[first]]
    if not view:  # no frame in the file
        view = file_frames_shape(source, dataset, panels)
    table = cxi_peaks(frames_json, view[2])
    attrs = {f"server_{k}": str(v) for k, v in server.items()}
    attrs.update(frames_per_request=frames_per_request)
    write_peak_file(output, table, FrameSource(source, dataset, (len(frames_json), *view[1:])), attrs)
    return FileResult(
        source=str(source),
        output=str(output),
        status="done",
        frames=len(frames_json),
        hits=int((table.found >= min_peaks).sum()),
        peaks=int(table.found.sum()),
        truncated_frames=int((table.found > table.n_peaks).sum()),
        seconds=time.perf_counter() - start,
    )


@dataclass
class RunSummary:
    """Totals of a run over the inputs processed now (skipped ones are listed, not counted)."""

    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    min_peaks: int = 10

    def totals(self) -> dict[str, Any]:
        done = [f for f in self.files if f.status == "done"]
        frames = sum(f.frames for f in done)
        hits = sum(f.hits for f in done)
        return {
            "files_done": len(done),
            "files_skipped": sum(f.status == "skipped" for f in self.files),
            "files_failed": sum(f.status == "failed" for f in self.files),
            "frames": frames,
            "hits": hits,
            "hit_rate": hits / frames if frames else 0.0,
            "min_peaks": self.min_peaks,
            "peaks_per_frame": sum(f.peaks for f in done) / frames if frames else 0.0,
            "truncated_frames": sum(f.truncated_frames for f in done),
            "seconds": self.seconds,
            "frames_per_s": frames / self.seconds if self.seconds > 0 else 0.0,
        }

    def format(self) -> str:
        t = self.totals()
        lines = [
            f"files   {t['files_done']} done, {t['files_skipped']} skipped (already complete), {t['files_failed']} failed",
            f"frames  {t['frames']} in {t['seconds']:.1f} s ({t['frames_per_s']:.1f} frames/s)",
            f"hits    {t['hits']} with >= {t['min_peaks']} peaks ({t['hit_rate']:.1%}),"
            f" {t['peaks_per_frame']:.1f} peaks/frame",
        ]
        if t["truncated_frames"]:
            lines.append(
                f"note    {t['truncated_frames']} frames had more than {CXI_MAX_PEAKS} peaks (kept the brightest)"
            )
        lines.extend(f"FAILED  {f.source}: {f.error}" for f in self.files if f.status == "failed")
        return "\n".join(lines)


def run(
    inputs: Sequence[Path],
    output_dir: Path,
    predict: Predict,
    dataset: str = DEFAULT_DATASET,
    panels: int | None = None,
    frames_per_request: int = 4,
    concurrency: int = 4,
    min_peaks: int = 10,
    overwrite: bool = False,
    show_progress: bool = True,
    send_mask: bool = True,
) -> RunSummary:
    """Process ``inputs`` one after another; a failed file is reported and the run goes on.

    ``send_mask``: send each input's bad-pixel mask with its frames where it has one (:func:`process_file`).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    summary = RunSummary(min_peaks=min_peaks)
    outputs = output_paths(inputs, output_dir)
    todo: list[tuple[Path, Path, int]] = []
    for source, output in zip(inputs, outputs):
        try:
            n_frames = file_frames_shape(source, dataset, panels)[0]
        except (OSError, KeyError, ValueError) as err:
            summary.files.append(FileResult(str(source), str(output), "failed", error=str(err)))
            continue
        if not overwrite and is_complete(output, n_frames):
            summary.files.append(FileResult(str(source), str(output), "skipped", frames=n_frames))
        else:
            todo.append((source, output, n_frames))

    with tqdm(total=sum(n for *_, n in todo), unit="frame", disable=not show_progress, dynamic_ncols=True) as bar:
        for source, output, _ in todo:
            bar.set_postfix_str(source.name)
            try:
                result = process_file(
                    source,
                    output,
                    predict,
                    dataset,
                    panels,
                    frames_per_request,
                    concurrency,
                    min_peaks,
                    bar.update,
                    send_mask=send_mask,
                )
            except (PeakfindError, ServerError, OSError, KeyError, ValueError) as err:
                result = FileResult(str(source), str(output), "failed", error=str(err))
            summary.files.append(result)
    summary.seconds = time.perf_counter() - start
    if summary.files and any(f.status != "failed" for f in summary.files):
        write_list_file(output_dir, [Path(f.output) for f in summary.files if f.status != "failed"])
    return summary


def write_list_file(output_dir: Path, outputs: Sequence[Path]) -> Path:
    """``peaks.lst``: the finished peak files, one per line, for ``indexamajig -i``."""
    path = output_dir / "peaks.lst"
    path.write_text("".join(f"{p.resolve()}\n" for p in sorted(outputs)))
    return path


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("inputs", nargs="+", help="CXI/HDF5 files or folders of them")
    p.add_argument("-o", "--output-dir", default="peaks", help="where peak files go (default ./peaks)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"inference address (default {DEFAULT_URL})")
    p.add_argument("--model", default="peaknet")
    p.add_argument("--token", help="inference key (TorchServe token authorisation)")
    p.add_argument("--key-file", help="TorchServe key_file.json to read the inference key from")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"frames in each input (default {DEFAULT_DATASET})")
    p.add_argument("--panels", type=int, help="split each slab (N, P*H, W) into P panels before sending")
    p.add_argument("--encoding", default="raw", choices=ENCODINGS, help="request encoding (default raw)")
    p.add_argument("--frames-per-request", type=int, default=4, help="frames per request (default 4)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--min-peaks", type=int, default=10, help="a hit has at least this many peaks (default 10)")
    p.add_argument(
        "--no-mask",
        action="store_true",
        help="do not send the inputs' bad-pixel masks (by default the mask next to the frames, or "
        "/entry_1/data_1/mask, non-zero = good, goes with every request, and the server finds no peak "
        "of its bad pixels)",
    )
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose peak file is complete")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in s (default 120)")
    p.add_argument("--summary-json", help="write the run summary as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for name in ("frames_per_request", "concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.panels is not None and args.panels < 1:
        p.error("--panels must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    try:
        inputs = discover_inputs(args.inputs, args.recursive, exclude=output_dir)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    if not inputs:
        print(f"no {'/'.join(INPUT_SUFFIXES)} files in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    client = PeakNetClient(args.url, args.model, args.encoding, args.token, args.key_file, args.timeout)
    try:
        client.ping()
    except ServerError as err:
        print(err, file=sys.stderr)
        return 3
    summary = run(
        inputs,
        output_dir,
        client.predict,
        dataset=args.dataset,
        panels=args.panels,
        frames_per_request=args.frames_per_request,
        concurrency=args.concurrency,
        min_peaks=args.min_peaks,
        overwrite=args.overwrite,
        show_progress=not args.quiet,
        send_mask=not args.no_mask,
    )
    print(summary.format())
    if args.summary_json:
        document = {**summary.totals(), "files": [asdict(f) for f in summary.files]}
        Path(args.summary_json).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if summary.totals()["files_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
