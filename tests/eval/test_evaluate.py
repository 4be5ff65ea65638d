"""peaknet_serve.eval.evaluate with the bundled model, on CPU, on one small held-out frame."""

import json
from pathlib import Path

import numpy as np
import pytest

from peaknet_serve.eval import evaluate
from peaknet_serve.sim.peaksim.frame import simulate_frame
from peaknet_serve.sim.peaksim.geometry import get_geometry

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "model_store" / "peaknet" / "peaknet.yaml"
TINY = ROOT / "tests" / "fixtures" / "upstream" / "peaknet_tiny.yaml"  # small real checkpoint: fast on CPU


@pytest.mark.skipif(not BUNDLED.is_file(), reason="bundled model not trained yet (model_store/peaknet)")
def test_bundled_model_finds_peaks_of_a_held_out_epix_frame(tmp_path):
    # Frame 1 of the ePix10k2M held-out sequence has 39 strong peaks.
    seed, frame_index = 20240, 1
    truth = simulate_frame(
        get_geometry("epix10k2m"), np.random.default_rng([seed, evaluate.GEOMETRY_INDEX["epix10k2m"], frame_index])
    )
    n_strong = int(truth.peaks.strong.sum())
    assert n_strong > 10
    assert (
        evaluate.main(
            [
                "--config",
                str(BUNDLED),
                "--geometries",
                "epix10k2m",
                "--frames",
                "1",
                "--first-frame",
                str(frame_index),
                "--dtypes",
                "float32",
                "bfloat16",
                "--device",
                "cpu",
                "--seed",
                str(seed),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "accuracy.json").read_text())
    accuracy = report["per_geometry"]["epix10k2m"]["accuracy"]
    for name in ("float32", "bfloat16"):
        assert accuracy[name]["tp"] + accuracy[name]["fn"] == n_strong
        assert accuracy[name]["f1"] >= 0.8
        position = accuracy[name]["position_error_px"]
        assert position["pairs"] == accuracy[name]["tp"]  # one distance per matched strong peak
        assert 0 < position["median"] <= position["p90"] <= 2.0
    assert report["overall"]["agreement_with_float32"]["bfloat16"]["agreement"] >= 0.9
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_artefact_probability_reaches_the_frames_and_the_report(tmp_path, monkeypatch):
    seen = []
    simulate = evaluate.simulate_frame

    def recording(geometry, rng, *args, **kwargs):
        frame = simulate(geometry, rng, *args, **kwargs)
        seen.append((kwargs.get("artefact_probability"), frame))
        return frame

    monkeypatch.setattr(evaluate, "simulate_frame", recording)
    assert (
        evaluate.main(
            [
                "--config",
                str(TINY),
                "--geometries",
                "cspad",
                "--frames",
                "1",
                "--first-frame",
                "1",
                "--dtypes",
                "float32",
                "bfloat16",
                "--device",
                "cpu",
                "--artefact-probability",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "accuracy.json").read_text())
    assert report["artefact_probability"] == 1.0
    assert [p for p, _ in seen] == [1.0] and seen[0][1].params.artefacts.any
    accuracy = report["per_geometry"]["cspad"]["accuracy"]["float32"]
    assert accuracy["tp"] + accuracy["fn"] == int(seen[0][1].peaks.strong.sum())  # every strong peak is scored
    assert "artefact probability 1," in (tmp_path / "accuracy.md").read_text()
    assert evaluate.parse_args(["--out", str(tmp_path)]).artefact_probability == 0.0
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--out", str(tmp_path), "--artefact-probability", "-0.1"])


@pytest.mark.parametrize("masked", [False, True])
def test_the_model_gets_each_frames_bad_pixel_mask_when_asked(tmp_path, monkeypatch, masked):
    """``--bad-pixel-mask`` gives the model the frame's mask (the one peakfinder8 gets); by default none."""
    from peaknet_serve.eval import runner

    frames, masks = [], []
    simulate, find = evaluate.simulate_frame, runner.find_frame_peaks

    def recording_simulate(*args, **kwargs):
        frames.append(simulate(*args, **kwargs))
        return frames[-1]

    def recording_find(finder, raw, good_pixels=None):
        masks.append(good_pixels)
        return find(finder, raw, good_pixels)

    monkeypatch.setattr(evaluate, "simulate_frame", recording_simulate)
    monkeypatch.setattr(runner, "find_frame_peaks", recording_find)
    argv = ["--config", str(TINY), "--geometries", "cspad", "--frames", "1", "--dtypes", "float32"]
    argv += ["--device", "cpu", "--out", str(tmp_path)] + (["--bad-pixel-mask"] if masked else [])
    assert evaluate.main(argv) == 0
    report = json.loads((tmp_path / "accuracy.json").read_text())
    assert report["model_bad_pixel_mask"] is masked
    assert len(masks) == 1
    if not masked:
        assert masks[0] is None
        assert "the model gets no bad-pixel mask" in (tmp_path / "accuracy.md").read_text()
    else:
        assert np.array_equal(masks[0], frames[-1].mask) and (frames[-1].mask == 0).any()
        assert "the model gets each frame's bad-pixel mask" in (tmp_path / "accuracy.md").read_text()
