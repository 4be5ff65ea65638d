"""The benchmarks run end to end at small size on the CPU and write their JSON + table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("module,extra", [
    ("benchmarks.bench_model", ["--modes", "fp32,autocast,bf16,lean"]),
    ("benchmarks.bench_handler", ["--model-config", "tests/fixtures/upstream/peaknet_tiny.yaml",
                                  "--variants", "baseline,bf16-eager"]),
])
def test_benchmark_small_cpu_run(tmp_path, module, extra):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, "-m", module, "--device", "cpu", "--small", "--out", str(out), *extra],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r.get("ms", r.get("total", 0)) > 0 for r in rows)
    assert out.with_suffix(".md").read_text().startswith("|")


@pytest.mark.e2e
@pytest.mark.slow
def test_end_to_end_benchmark_small_cpu_run(tmp_path):
    """A real TorchServe with the echo ceiling and the tiny model, load-tested for a few seconds."""
    out = tmp_path / "e2e.json"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_e2e", "--small", "--gpus", "1", "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert {r["target"] for r in rows} == {"echo", "upstream-eager"}
    assert all(r["error_rate"] == 0 and r["fps"] > 0 for r in rows)
    assert out.with_suffix(".png").stat().st_size > 0
