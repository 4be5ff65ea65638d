"""The result files of an evaluation or a benchmark: JSON, PNG where a plot is given, Markdown with the command."""

import json

import numpy as np

from peaknet_serve.results import write_report


def test_writes_json_markdown_and_the_plot_into_a_new_folder(tmp_path):
    out = tmp_path / "results" / "nested"
    plotted = []

    def plot(report, path):
        plotted.append(report["rows"])
        path.write_bytes(b"png")

    write_report(out, "bench", {"rows": [1, 2]}, "| a |\n|---|", "`peaknet-bench --x 1`", plot)
    assert json.loads((out / "bench.json").read_text()) == {"rows": [1, 2]}
    assert (out / "bench.md").read_text() == "| a |\n|---|\n\nReproduce: `peaknet-bench --x 1`\n"
    assert plotted == [[1, 2]] and (out / "bench.png").read_bytes() == b"png"


def test_without_a_plot_no_png_and_json_default_converts_values(tmp_path):
    write_report(tmp_path, "r", {"x": np.float32(0.5)}, "t", "`c`", json_default=float)
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 0.5}
    assert not (tmp_path / "r.png").exists()
