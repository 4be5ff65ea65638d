"""Result files of an evaluation or a benchmark: the report as JSON, its plot as PNG and its table as
Markdown followed by the command that reproduces it.

One writer for the evaluation commands (:func:`peaknet_serve.eval.runner.run_evaluation`,
:mod:`peaknet_serve.eval.merge`) and the benchmarks (:func:`benchmarks.timing.write_results`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["write_report"]


def write_report(
    out: Path,
    name: str,
    report: Mapping[str, Any],
    table: str,
    reproduce: str,
    plot: Callable[[Any, Path], None] | None = None,
    json_default: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``<name>.json``, ``<name>.png`` (only with ``plot``) and ``<name>.md`` into ``out``.

    Args:
        out: folder of the files; made where missing.
        name: their common stem.
        report: the JSON document (1-space indent); ``json_default`` converts what ``json`` cannot.
        table: Markdown body of ``<name>.md``.
        reproduce: Markdown after ``Reproduce:`` on the last line, e.g. a command in backticks.
        plot: ``plot(report, path)`` writes the PNG.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=json_default))
    if plot is not None:
        plot(report, out / f"{name}.png")
    (out / f"{name}.md").write_text(f"{table}\n\nReproduce: {reproduce}\n")
