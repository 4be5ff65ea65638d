"""Timing and reporting helpers shared by the benchmarks.

GPU work is timed with CUDA events around each repeat (``torch.cuda.Event(enable_timing=True)``);
CPU work with ``time.perf_counter``. Every figure is the median over repeats after warm-ups.
Results are written as JSON (with the command line and environment) plus a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from peaknet_serve.results import write_report
from peaknet_serve.timing import time_samples_ms


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` runs (:func:`peaknet_serve.timing.time_samples_ms`).

    Returns:
        ``{"median_ms", "min_ms", "max_ms"}`` over the timed repeats.
    """
    samples = time_samples_ms(fn, device, warmup, repeats)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples)}


#: Environment variables that change what a benchmark measures; set ones are part of its command.
RUN_ENVIRONMENT = ("PYTORCH_CUDA_ALLOC_CONF", "PEAKNET_RESIZE")


def command_line() -> str:
    """How this benchmark was started, as ``[VAR=value ...] python -m benchmarks.NAME ...``."""
    module = Path(sys.argv[0]).stem
    settings = [f"{name}={os.environ[name]}" for name in RUN_ENVIRONMENT if os.environ.get(name)]
    return " ".join([*settings, "python", "-m", f"benchmarks.{module}", *sys.argv[1:]])


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "host": platform.node(),
        "command": command_line(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as a markdown table; ``columns`` are (key, header) pairs; floats get 2-3 significant places."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return "—" if value is None else str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(path: Path, payload: dict[str, Any], table: str) -> None:
    """``path`` (.json) and the same stem with .md holding the table and the command."""
    command = payload.get("environment", {}).get("command", "")
    write_report(path.parent, path.stem, payload, table, f"`{command}`")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bar_chart(
    groups: list[str],
    series: dict[str, list[float | None]],
    path: Path,
    *,
    ylabel: str,
    title: str,
    log: bool = False,
    reference: float | None = None,
) -> None:
    """Grouped bar chart (one group per case, one bar per series) saved as PNG."""
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 2), 4))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(
            [x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None], width, label=name
        )
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle=":")
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rows(
    rows: Sequence[dict[str, Any]],
    path: Path,
    *,
    group: Callable[[dict], str],
    series: Callable[[dict], str],
    value: str,
    **chart: Any,
) -> None:
    """Pivot result rows into a grouped bar chart: one group per ``group(row)``, one bar per
    ``series(row)``, bar height ``row[value]``; ``chart`` goes to :func:`bar_chart`."""
    groups = list(dict.fromkeys(group(r) for r in rows))
    names = list(dict.fromkeys(series(r) for r in rows))
    lookup = {(group(r), series(r)): r[value] for r in rows}
    bar_chart(groups, {n: [lookup.get((g, n)) for g in groups] for n in names}, path, **chart)


def add_run_arguments(parser: argparse.ArgumentParser, default_out: Path) -> None:
    """The options every timed benchmark takes: warm-ups, repeats, output path, re-plotting."""
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs; the median is reported")
    parser.add_argument("--out", type=Path, default=default_out, help="results JSON (.md/.png beside it)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from an existing --out JSON")


def replot(args: Any, plot: Callable[[list[dict], Path], None]) -> bool:
    """With ``--plot-only``: redraw ``args.out``'s PNG from its JSON and return True."""
    if not args.plot_only:
        return False
    plot(json.loads(args.out.read_text())["rows"], args.out.with_suffix(".png"))
    return True
