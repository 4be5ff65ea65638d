"""The sizing table: measured rates carried over, derived ones computed as documented."""

import json
import math
import shutil

import pytest

from benchmarks import make_sizing_table as sizing

EPIX_MB = 16 * 352 * 384 * 2


def model_run(model: str, cases: dict[tuple[int, int, int], float]) -> dict:
    """A bench_model result: ``cases`` maps (panels, H, W) to ms per batch."""
    rows = [
        {"model": model, "mode": "fast_pure", "shape": [b, 1, h, w], "ms": ms, "items_per_s": b / ms * 1e3}
        for (b, h, w), ms in cases.items()
    ]
    rows.append({"model": model, "mode": "fp32", "shape": [64, 1, 352, 384], "ms": 1.0, "items_per_s": 1.0})
    return {"rows": rows}


def e2e_run(target: str, closed: list[float], stream_ok: bool | None = None, echo: float | None = None) -> dict:
    rows = [{"target": target, "loop": "closed", "concurrency": 16 * (i + 1), "fps": f} for i, f in enumerate(closed)]
    if stream_ok is not None:
        rows.append(
            {
                "target": target,
                "loop": "open",
                "concurrency": None,
                "rate_hz": 120.0,
                "fps": 119.5,
                "fell_behind": not stream_ok,
                "error_rate": 0.0,
            }
        )
    if echo is not None:
        rows.append({"target": "echo", "loop": "closed", "concurrency": 64, "fps": echo})
    return {"rows": rows}


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A results folder: model-level runs of three models (the 673M without a Jungfrau case), the
    bundled model and the 33M served end to end (the 33M twice), the 673M not."""
    files = {
        "bundled.json": model_run("peaknet", {(64, 352, 384): 10.0, (4, 1920, 1920): 20.0}),
        "m33.json": model_run("peaknet-33m", {(64, 352, 384): 20.0, (32, 512, 1024): 40.0}),
        "m673.json": model_run("peaknet-673m", {(64, 352, 384): 100.0, (128, 192, 416): 150.0}),
        "e2e_bundled.json": e2e_run("b", [300.0, 250.0], echo=500.0),
        "e2e_33m_a.json": e2e_run("t", [150.0, 160.0], stream_ok=True),
        "e2e_33m_b.json": e2e_run("t", [155.0], stream_ok=True),
    }
    for name, payload in files.items():
        (tmp_path / name).write_text(json.dumps(payload))
    monkeypatch.setattr(
        sizing,
        "MODEL_RUNS",
        {"peaknet": ("bundled.json",), "peaknet-33m": ("m33.json",), "peaknet-673m": ("m673.json",)},
    )
    monkeypatch.setattr(
        sizing,
        "E2E_RUNS",
        {"peaknet": (("e2e_bundled.json",), "b"), "peaknet-33m": (("e2e_33m_a.json", "e2e_33m_b.json"), "t")},
    )
    monkeypatch.setattr(sizing, "ECHO_RUN", ("e2e_bundled.json", "echo"))
    return tmp_path


def by_key(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["detector"]): r for r in rows}


def test_detector_of_padded_panel_shapes():
    assert sizing.detector_of([64, 1, 352, 384]) == "epix10k2m"
    assert sizing.detector_of([32, 1, 512, 1024]) == "jungfrau4m"
    assert sizing.detector_of([128, 1, 192, 416]) == "cspad"
    assert sizing.detector_of([4, 1, 1920, 1920]) == "rayonix"
    assert sizing.detector_of([4, 1, 185, 388]) is None


def test_gpus_for_a_rate():
    assert sizing.gpus_for(120, 119.1, {120: True}) == 1
    assert sizing.gpus_for(120, 119.1, {120: False}) == 2
    assert sizing.gpus_for(1000, 119.1, {120: True}) == 9
    assert sizing.gpus_for(1000, 250.0, {}) == 4


def test_measured_rows_carry_the_end_to_end_figure(results):
    rows, inputs = sizing.sizing_rows(results)
    table = by_key(rows)
    bundled = table["bundled (3.5M)", "epix10k2m"]
    assert bundled["per_gpu_is"] == "measured end to end"
    assert bundled["frames_per_s_per_gpu"] == 300.0
    assert bundled["model_frames_per_s"] == pytest.approx(64 / 0.010 / 16)
    assert bundled["serving_efficiency"] == pytest.approx(300.0 / 400.0)
    # the 33M: the lower of the two runs' best closed loop; its 120 Hz stream kept up in both runs
    m33 = table["33M", "epix10k2m"]
    assert m33["frames_per_s_per_gpu"] == 155.0
    assert inputs["e2e_epix10k2m"]["33M"]["per_run"] == [160.0, 155.0]
    assert m33["gpus_120hz"] == 1 and m33["gpus_1000hz"] == math.ceil(1000 / 155.0)


def test_derived_rows_apply_efficiency_and_transport_ceiling(results):
    rows, inputs = sizing.sizing_rows(results)
    table = by_key(rows)
    assert inputs["echo_frames_per_s"] == 500.0
    # bundled Rayonix: model 4 frames / 20 ms = 200 frames/s × 0.75 = 150; transport 500 × 4.33 / 7.37 MB = 294
    ray = table["bundled (3.5M)", "rayonix"]
    assert ray["per_gpu_is"] == "derived"
    assert ray["frames_per_s_per_gpu"] == pytest.approx(200.0 * 0.75)
    assert ray["transport_ceiling_fps"] == pytest.approx(500 * EPIX_MB / (1920 * 1920 * 2))
    # the 673M has no end-to-end run: it takes the 33M's efficiency (155 / 200)
    cspad = table["673M", "cspad"]
    assert cspad["efficiency_of"] == "33M"
    assert cspad["frames_per_s_per_gpu"] == pytest.approx(128 / 0.150 / 32 * 155.0 / 200.0)
    assert cspad["gpus_120hz"] == math.ceil(120 / cspad["frames_per_s_per_gpu"])
    assert ("673M", "jungfrau4m") not in table  # no such case was measured
    for r in rows:
        if r["per_gpu_is"] == "derived":
            assert r["frames_per_s_per_gpu"] <= r["transport_ceiling_fps"] + 1e-9


def test_transport_ceiling_caps_a_fast_model(results):
    """A model faster than TorchServe can move the frames is limited by the echo ceiling."""
    (results / "bundled.json").write_text(
        json.dumps(model_run("peaknet", {(64, 352, 384): 10.0, (4, 1920, 1920): 1.0}))
    )
    ray = by_key(sizing.sizing_rows(results)[0])["bundled (3.5M)", "rayonix"]
    assert ray["frames_per_s_per_gpu"] == pytest.approx(ray["transport_ceiling_fps"])


def test_committed_table_is_current(tmp_path):
    """benchmarks/results/sizing_h200.md is what the committed runs give; --check notices a stale one."""
    assert sizing.main(["--check"]) == 0
    stale = tmp_path / "results"
    shutil.copytree(sizing.RESULTS, stale, ignore=shutil.ignore_patterns("*.png"))
    (stale / "sizing_h200.md").write_text("| stale |\n")
    assert sizing.main(["--check", "--results", str(stale)]) == 1
