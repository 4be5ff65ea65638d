#!/usr/bin/env python3
"""How many H200s a detector's frame rate needs, per model: the sizing table.

    python -m benchmarks.make_sizing_table            # write benchmarks/results/sizing_h200.{json,md,png}
    python -m benchmarks.make_sizing_table --check    # exit 1 if those files are out of date

It reads committed results only (``benchmarks/results/``):

- model level (``bench_model --modes fast_pure``, the ``sizing_*_h200.json`` runs): the GPU time of a
  batch of one detector's panels (about 4 frames) for the bundled, 33M and 673M models, **measured**;
  ``model frames/s = panels/s ÷ panels per frame``.
- end to end for ePix10k2M (``bench_e2e``): the best closed-loop frames/s of each committed run of
  the bundled and 33M servers, the lower of the runs, **measured**, and the echo handler's ceiling for
  the same frames (TorchServe's transport alone), **measured**.

From them, for every (model, detector), **derived** and labelled so:

- ``serving efficiency`` = the model's ePix10k2M end-to-end frames/s ÷ its ePix10k2M model-level
  frames/s (the 673M model, never served end to end here, takes the 33M's);
- ``transport ceiling`` = the echo ceiling in bytes/s ÷ the detector's uint16 frame size;
- ``frames/s per GPU`` = min(model frames/s × serving efficiency, transport ceiling), the measured
  figure itself for ePix10k2M; ``GPUs for R Hz`` = ceil(R ÷ frames/s per GPU), or 1 where one GPU
  answered an open-loop R Hz stream in full in every committed run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks.timing import bar_chart, markdown_table
from peaknet_serve.results import write_report
from peaknet_serve.sim.peaksim.geometry import get_geometry

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NAME = "sizing_h200"

#: model label (as bench_model names it) -> the model-level runs holding its detector cases.
MODEL_RUNS = {
    "peaknet": ("sizing_bundled_h200.json", "sizing_rayonix_bundled_h200.json"),
    "peaknet-33m": ("sizing_33m_h200.json", "sizing_rayonix_33m_h200.json"),
    "peaknet-673m": ("sizing_673m_h200.json", "sizing_cspad_673m_h200.json", "sizing_rayonix_673m_h200.json"),
}
MODEL_NAMES = {"peaknet": "bundled (3.5M)", "peaknet-33m": "33M", "peaknet-673m": "673M"}
#: model label -> (end-to-end runs, target name in them); the 673M has none.
E2E_RUNS = {
    "peaknet": (("e2e_bundled_mps_head_h200.json",), "peaknet-compiled-block"),
    "peaknet-33m": (
        ("e2e_33m_head_h200.json", "e2e_33m_head_repeat_h200.json"),
        "p33-trained-like-compiled-pure-block",
    ),
}
ECHO_RUN = ("e2e_bundled_mps_head_h200.json", "echo")
#: the model whose serving efficiency a model without end-to-end runs takes.
EFFICIENCY_FALLBACK = "peaknet-33m"
DETECTORS = ("epix10k2m", "jungfrau4m", "cspad", "rayonix")
MEASURED_E2E_DETECTOR = "epix10k2m"
RATES_HZ = (120, 1000, 5000)


def padded(size: int, multiple: int = 32) -> int:
    """``size`` rounded up to ``multiple`` (the server pads panels so every stride divides them)."""
    return -(-size // multiple) * multiple


def detector_of(shape: list[int]) -> str | None:
    """The detector whose (padded) panel is ``shape[-2:]`` of a ``(B, 1, H, W)`` model input."""
    for name in DETECTORS:
        h, w = get_geometry(name).panel_shape
        if (padded(h), padded(w)) == tuple(shape[-2:]):
            return name
    return None


def load(name: str, results: Path) -> dict[str, Any]:
    return json.loads((results / name).read_text())


def model_rates(results: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, detector) -> the model-level row: ms per batch, panels per batch, frames/s, source."""
    rates = {}
    for model, files in MODEL_RUNS.items():
        for file in files:
            for row in load(file, results)["rows"]:
                if row["model"] != model or row["mode"] != "fast_pure":
                    continue
                detector = detector_of(row["shape"])
                if detector is None:
                    continue
                panels = get_geometry(detector).n_panels
                rates[model, detector] = {
                    "panels_per_batch": row["shape"][0],
                    "frames_per_batch": row["shape"][0] / panels,
                    "ms_per_batch": row["ms"],
                    "model_frames_per_s": row["items_per_s"] / panels,
                    "gpu_ms_per_frame": row["ms"] * panels / row["shape"][0],
                    "source": file,
                }
    return rates


def closed_loop_best(rows: list[dict], target: str) -> float:
    """The highest closed-loop frames/s of ``target`` in one end-to-end run."""
    values = [r["fps"] for r in rows if r["target"] == target and r.get("concurrency") is not None]
    if not values:
        raise SystemExit(f"no closed-loop rows for {target!r}")
    return max(values)


def streams_kept_up(runs: list[list[dict]], target: str) -> dict[int, bool]:
    """Open-loop rate (Hz) -> whether ``target`` answered that stream in every run that played it:
    no errors and never fell behind."""
    kept: dict[int, bool] = {}
    for rows in runs:
        for r in rows:
            if r["target"] == target and r.get("loop") == "open":
                ok = not r["fell_behind"] and r["error_rate"] == 0
                rate = round(r["rate_hz"])
                kept[rate] = kept.get(rate, True) and ok
    return kept


def e2e_rates(results: Path) -> dict[str, dict[str, Any]]:
    """model -> the ePix10k2M end-to-end frames/s (the lower of the runs' best closed loop), the
    open-loop streams it kept up with, and the sources."""
    rates = {}
    for model, (files, target) in E2E_RUNS.items():
        runs = [load(f, results)["rows"] for f in files]
        per_run = [closed_loop_best(rows, target) for rows in runs]
        rates[model] = {
            "frames_per_s": min(per_run),
            "per_run": per_run,
            "streams_kept_up": streams_kept_up(runs, target),
            "sources": list(files),
        }
    return rates


def gpus_for(rate: int, frames_per_s: float, kept_up: dict[int, bool]) -> int:
    """GPUs for a ``rate`` Hz stream: one where one GPU answered that stream in full, else
    ceil(rate ÷ frames/s per GPU)."""
    if kept_up.get(rate):
        return 1
    return math.ceil(rate / frames_per_s)


def frame_bytes(detector: str) -> int:
    """Bytes of one uint16 frame of ``detector`` (its unpadded panels)."""
    geometry = get_geometry(detector)
    h, w = geometry.panel_shape
    return geometry.n_panels * h * w * 2


def sizing_rows(results: Path = RESULTS) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per (model, detector) with measured and derived figures; and the inputs used."""
    models, e2e = model_rates(results), e2e_rates(results)
    echo_fps = closed_loop_best(load(ECHO_RUN[0], results)["rows"], ECHO_RUN[1])
    echo_bytes_per_s = echo_fps * frame_bytes(MEASURED_E2E_DETECTOR)
    efficiency = {
        model: e2e[model]["frames_per_s"] / models[model, MEASURED_E2E_DETECTOR]["model_frames_per_s"] for model in e2e
    }
    rows = []
    for model in MODEL_RUNS:
        eff_model = model if model in efficiency else EFFICIENCY_FALLBACK
        for detector in DETECTORS:
            if (model, detector) not in models:
                continue
            m = models[model, detector]
            measured = detector == MEASURED_E2E_DETECTOR and model in e2e
            transport = echo_bytes_per_s / frame_bytes(detector)
            per_gpu = (
                e2e[model]["frames_per_s"]
                if measured
                else min(m["model_frames_per_s"] * efficiency[eff_model], transport)
            )
            row = {
                "model": MODEL_NAMES[model],
                "detector": detector,
                "frame_mb": frame_bytes(detector) / 1e6,
                **m,
                "serving_efficiency": efficiency[eff_model],
                "efficiency_of": MODEL_NAMES[eff_model],
                "transport_ceiling_fps": transport,
                "frames_per_s_per_gpu": per_gpu,
                "per_gpu_is": "measured end to end" if measured else "derived",
            }
            kept_up = e2e[model]["streams_kept_up"] if measured else {}
            row.update({f"gpus_{rate}hz": gpus_for(rate, per_gpu, kept_up) for rate in RATES_HZ})
            rows.append(row)
    inputs = {
        "e2e_epix10k2m": {MODEL_NAMES[k]: v for k, v in e2e.items()},
        "echo_frames_per_s": echo_fps,
        "echo_source": ECHO_RUN[0],
        "rates_hz": list(RATES_HZ),
    }
    return rows, inputs


COLUMNS = [
    ("model", "model"),
    ("detector", "detector"),
    ("frame_mb", "frame MB"),
    ("gpu_ms_per_frame", "GPU ms/frame (measured)"),
    ("model_frames_per_s", "model frames/s (measured)"),
    ("serving_efficiency", "serving efficiency"),
    ("transport_ceiling_fps", "transport ceiling frames/s"),
    ("frames_per_s_per_gpu", "frames/s per GPU"),
    ("per_gpu_is", "frames/s per GPU is"),
    *((f"gpus_{rate}hz", f"GPUs for {rate} Hz") for rate in RATES_HZ),
]


def table(rows: list[dict[str, Any]], inputs: dict[str, Any]) -> str:
    e2e = inputs["e2e_epix10k2m"]
    measured = "; ".join(
        f"{name} {', '.join(f'{v:.1f}' for v in d['per_run'])} frames/s ({', '.join(d['sources'])})"
        for name, d in e2e.items()
    )
    notes = [
        "",
        "One H200 per GPU; the model in its served form (pure bf16, compiled, separable convs merged; "
        "`bench_model --modes fast_pure`, batches of about 4 frames, the 673M at 2 frames for "
        "Jungfrau 4M and Rayonix). Panels are padded to multiples of 32 (CSPAD 185×388 → 192×416). "
        "Rayonix is one 1920×1920 panel.",
        "",
        f"Measured end to end, ePix10k2M uint16, one frame per request, best closed loop per run: {measured}; "
        f"the echo handler's ceiling {inputs['echo_frames_per_s']:.0f} frames/s ({inputs['echo_source']}). "
        "These runs served the model without the separable-conv merge (1.02–1.06× at model level), so "
        "the serving efficiencies derived from them are on the low side.",
        "",
        "Derived, not measured: serving efficiency = the model's ePix10k2M end-to-end ÷ model-level frames/s "
        "(the 673M takes the 33M's); transport ceiling = the echo ceiling's bytes/s ÷ the frame's bytes; "
        "frames/s per GPU = min(model frames/s × efficiency, transport ceiling); GPUs = ceil(rate ÷ that), "
        "without headroom, or 1 where one GPU answered that open-loop stream in full (the 33M, ePix10k2M, "
        "120 Hz: no errors, never behind, in both runs). "
        "Several GPUs are counted as independent servers behind a load balancer, scaling linearly (not measured). "
        "Load-test your own detector before a beamtime (docs/load-testing.md).",
    ]
    return markdown_table(rows, COLUMNS) + "\n" + "\n".join(notes)


def plot(report: dict[str, Any], path: Path) -> None:
    rows = report["rows"]
    detectors = list(dict.fromkeys(r["detector"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    lookup = {(r["model"], r["detector"]): r["frames_per_s_per_gpu"] for r in rows}
    bar_chart(
        detectors,
        {m: [lookup.get((m, d)) for d in detectors] for m in models},
        path,
        ylabel="frames/s per H200",
        title="Frames/s one H200 serves (ePix10k2M measured, others derived); dotted: 120 Hz",
        log=True,
        reference=120.0,
    )


def report_text(results: Path = RESULTS) -> tuple[dict[str, Any], str]:
    rows, inputs = sizing_rows(results)
    command = "python -m benchmarks.make_sizing_table"
    return {"command": command, "inputs": inputs, "rows": rows}, table(rows, inputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when sizing_h200.json/.md are out of date")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the committed results")
    args = parser.parse_args(argv)
    payload, text = report_text(args.results)
    if args.check:
        current = args.results / f"{NAME}.md"
        expected = f"{text}\n\nReproduce: `{payload['command']}`\n"
        if not current.exists() or current.read_text() != expected:
            print(f"{current} is out of date: run python -m benchmarks.make_sizing_table", file=sys.stderr)
            return 1
        return 0
    write_report(args.results, NAME, payload, text, f"`{payload['command']}`", plot=plot)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
