"""peakfinder8 beside the model: one run with --peakfinder8, or two runs joined by peaknet-evaluate-merge."""

import json
from pathlib import Path

import pytest

from peaknet_serve.eval import evaluate, merge
from tests.eval.test_peakfinder8 import needs_pf8

BUNDLED = Path(__file__).resolve().parents[2] / "model_store" / "peaknet" / "peaknet.yaml"


def report(seed=1, frames=2, first_frame=0, detectors=("epix10k2m",), baseline=False) -> dict:
    entry = {"accuracy": {"float32": {"f1": 0.9, "precision": 0.9, "recall": 0.9}}}
    if baseline:
        entry = {"accuracy": {}, "peakfinder8": {"best": {}, "accuracy": {"f1": 0.8}}}
    out = {
        "seed": seed,
        "frames_per_geometry": frames,
        "first_frame": first_frame,
        "input": "float32 ADU",
        "match_radius_px": 2.0,
        "per_geometry": {d: dict(entry) for d in detectors},
        "overall": {"accuracy": {}},
    }
    if baseline:
        out["peakfinder8"] = {"om": "23.8.3"}
        out["overall"]["peakfinder8"] = {"accuracy": {"f1": 0.8}}
    return out


def test_merge_copies_the_baseline_next_to_the_model():
    merged = merge.merge_baseline(report(), report(baseline=True))
    entry = merged["per_geometry"]["epix10k2m"]
    assert entry["accuracy"]["float32"]["f1"] == 0.9 and entry["peakfinder8"]["accuracy"]["f1"] == 0.8
    assert merged["overall"]["peakfinder8"]["accuracy"]["f1"] == 0.8 and merged["peakfinder8"]["om"] == "23.8.3"


@pytest.mark.parametrize(
    "other", [dict(seed=2), dict(frames=3), dict(first_frame=1000), dict(detectors=("epix10k2m", "cspad"))]
)
def test_merge_refuses_reports_of_other_frames(other):
    with pytest.raises(ValueError, match="differ|different"):
        merge.merge_baseline(report(), report(baseline=True, **other))
    with pytest.raises(ValueError, match="no peakfinder8"):
        merge.merge_baseline(report(), report())


def test_baseline_only_needs_peakfinder8(tmp_path):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--baseline-only", "--out", str(tmp_path)])


@needs_pf8
@pytest.mark.slow
def test_two_runs_joined_equal_one_run_with_the_baseline(tmp_path):
    common = [
        "--config",
        str(BUNDLED),
        "--geometries",
        "epix10k2m",
        "--frames",
        "1",
        "--first-frame",
        "1",
        "--device",
        "cpu",
        "--pf8-tune-frames",
        "1",
    ]
    assert evaluate.main([*common, "--dtypes", "float32", "--peakfinder8", "--out", str(tmp_path / "one")]) == 0
    assert evaluate.main([*common, "--dtypes", "float32", "--out", str(tmp_path / "model")]) == 0
    assert evaluate.main([*common, "--peakfinder8", "--baseline-only", "--out", str(tmp_path / "pf8")]) == 0
    assert (
        merge.main(
            [
                "--kind",
                "accuracy",
                "--model",
                str(tmp_path / "model" / "accuracy.json"),
                "--baseline",
                str(tmp_path / "pf8" / "accuracy_peakfinder8.json"),
                "--out",
                str(tmp_path / "joined"),
            ]
        )
        == 0
    )
    one = json.loads((tmp_path / "one" / "accuracy.json").read_text())
    joined = json.loads((tmp_path / "joined" / "accuracy.json").read_text())
    for key in ("best", "accuracy"):
        assert (
            joined["per_geometry"]["epix10k2m"]["peakfinder8"][key]
            == one["per_geometry"]["epix10k2m"]["peakfinder8"][key]
        )
    assert (
        joined["per_geometry"]["epix10k2m"]["accuracy"]["float32"]["f1"]
        == one["per_geometry"]["epix10k2m"]["accuracy"]["float32"]["f1"]
    )
    table = (tmp_path / "joined" / "accuracy.md").read_text()
    assert "F1 peakfinder8" in table and "peaknet-evaluate-merge" in table
