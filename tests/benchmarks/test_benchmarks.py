"""The benchmarks run end to end at small size on the CPU and write their JSON + table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(module: str, *args: str) -> None:
    """``python -m <module> <args>`` from the repository root; fails the test when it fails."""
    subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, check=True, capture_output=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    "module,extra",
    [
        ("benchmarks.bench_model", ["--modes", "fp32,autocast,bf16,lean"]),
        (
            "benchmarks.bench_handler",
            ["--model-config", "tests/fixtures/upstream/peaknet_tiny.yaml", "--variants", "baseline,bf16-eager"],
        ),
    ],
)
def test_benchmark_small_cpu_run(tmp_path, module, extra):
    out = tmp_path / "result.json"
    run_benchmark(module, "--device", "cpu", "--small", "--out", str(out), *extra)
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r.get("ms", r.get("total", 0)) > 0 for r in rows)
    assert out.with_suffix(".md").read_text().startswith("|")


@pytest.mark.slow
def test_upsample_benchmark_small_cpu_run(tmp_path):
    """Both compiled variants timed per case, and their outputs agree."""
    out = tmp_path / "upsample.json"
    run_benchmark("benchmarks.bench_upsample", "--device", "cpu", "--small", "--repeats", "2", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert {r["case"] for r in rows} == {"bifpn_x2", "seg_x2", "score_x4"}
    assert all(r["interpolate_ms"] > 0 and r["blend_ms"] > 0 and r["max_rel_diff"] < 1e-5 for r in rows)


@pytest.mark.e2e
@pytest.mark.slow
def test_end_to_end_benchmark_small_cpu_run(tmp_path):
    """A real TorchServe with the echo ceiling and the tiny model at two batch delays, load-tested
    for a few seconds each."""
    out = tmp_path / "e2e.json"
    run_benchmark("benchmarks.bench_e2e", "--small", "--gpus", "1", "--delay-ms", "2", "20", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert {r["target"] for r in rows} == {"echo", "upstream-eager-d2", "upstream-eager-d20"}
    assert {r["target"]: r["delay_ms"] for r in rows}["upstream-eager-d20"] == 20
    assert all(r["error_rate"] == 0 and r["fps"] > 0 for r in rows)
    assert all(r["gpu_reserved_mb"] is None for r in rows)  # the gauge is published by CUDA workers only
    assert out.with_suffix(".png").stat().st_size > 0
    assert all(r["server_cpu_ms_per_frame"] > 0 for r in rows if r["target"] != "echo")
    startups = json.loads(out.read_text())["startups"]
    assert [s["target"] for s in startups] == ["echo", "upstream-eager-d2", "upstream-eager-d20"]
    assert all(0 < s["first_ready_s"] <= s["all_ready_s"] for s in startups)
    assert startups[1]["handler"] and startups[1]["handler"][0]["cache"] == "off"  # eager on CPU


@pytest.mark.slow
def test_peak_extraction_benchmark_small_cpu_run(tmp_path):
    out = tmp_path / "peaks.json"
    run_benchmark("benchmarks.bench_peaks", "--device", "cpu", "--small", "--network-ms", "50", "--out", str(out))
    rows = {(r["mask"], r["limits"]): r for r in json.loads(out.read_text())["rows"]}
    capped = "cap 25%, 64 iterations"
    assert rows[("all ones", "none")]["peaks"] == 4 and rows[("all ones", capped)]["peaks"] == 0  # 4 panels
    assert rows[("all ones", capped)]["capped_panels"] == 4
    assert rows[("typical (bundled model)", capped)]["capped_panels"] == 0
    assert all(r["peaks_ms"] > 0 and r["batch_ratio"] > 0 for r in rows.values())
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize(
    "name,kind",
    [
        # Inductor names list the fused ATen ops, convolutions and dtype conversions included.
        (
            "triton_poi_fused__to_copy__unsafe_index_add_clone_convolution_gelu_mul_native_group_norm_sub_view_71",
            "fused (Inductor/Triton)",
        ),
        ("triton_red_fused_convolution_native_layer_norm_permute_0", "fused (Inductor/Triton)"),
        (
            "sm80_xmma_fprop_implicit_gemm_indexed_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize64x64x64_stage4",
            "convolution",
        ),
        (
            "void tensorTransformGeneric<__nv_bfloat16, __nv_bfloat16, float, true, false, false>",
            "cuDNN layout transform",
        ),
        ("conv2d_c1_k1_nhwc_specialized", "depthwise conv"),
        ("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN", "matrix multiply"),
        (
            "void at::native::(anonymous namespace)::upsample_bilinear2d_nhwc_out_frame<c10::BFloat16, float>",
            "upsample",
        ),
        (
            "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float, false>",
            "normalisation",
        ),
    ],
)
def test_kernel_kinds_of_real_kernel_names(name, kind):
    from benchmarks.profile_model import kernel_kind

    assert kernel_kind(name) == kind


def test_command_line_names_the_allocator_setting(monkeypatch):
    from benchmarks import timing

    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_model.py", "--device", "cuda"])
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PEAKNET_RESIZE", raising=False)
    assert timing.command_line() == "python -m benchmarks.bench_model --device cuda"
    monkeypatch.setenv("PEAKNET_RESIZE", "blend")
    assert timing.command_line() == "PEAKNET_RESIZE=blend python -m benchmarks.bench_model --device cuda"
    monkeypatch.delenv("PEAKNET_RESIZE")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert timing.command_line() == (
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python -m benchmarks.bench_model --device cuda"
    )


def test_performance_doc_is_generated_from_the_committed_results():
    """docs/performance.md is what the generator makes of benchmarks/results/ (regenerate after a run)."""
    from benchmarks import make_performance_doc

    assert make_performance_doc.main(["--check"]) == 0
    text = make_performance_doc.performance_doc()
    for name, _ in make_performance_doc.SECTIONS:
        assert f"`benchmarks/results/{name}`" in text


@pytest.mark.slow
def test_cpu_benchmark_reports_cpu_seconds_per_frame(tmp_path):
    out = tmp_path / "cpu.json"
    run_benchmark(
        "benchmarks.bench_cpu",
        "--model-config",
        "tests/fixtures/upstream/peaknet_tiny.yaml",
        "--geometries",
        "cspad",
        "--repeats",
        "1",
        "--out",
        str(out),
    )
    (row,) = json.loads(out.read_text())["rows"]
    assert row["geometry"] == "cspad" and row["frame"] == [32, 185, 388] and row["cpu_s"] > 0


def test_decode_benchmark_times_each_encoding_against_uncompressed_hdf5(tmp_path):
    out = tmp_path / "decode.json"
    run_benchmark(
        "benchmarks.bench_decode",
        "--geometry",
        "rayonix",
        "--encodings",
        "raw",
        "hdf5-bslz4",
        "--repeats",
        "1",
        "--out",
        str(out),
    )
    rows = {row["encoding"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["hdf5", "raw", "hdf5-bslz4"]
    assert rows["hdf5"]["served_vs_hdf5"] == 1.0 and "served_vs_hdf5" not in rows["raw"]
    assert rows["hdf5-bslz4"]["body_mb"] < rows["hdf5"]["body_mb"]
    assert all(row["served_ms"] > 0 and row["in_process_ms"] > 0 for row in rows.values())
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()


@pytest.mark.slow
def test_budget_benchmark_compares_the_calibrated_estimate_with_a_measured_batch(tmp_path):
    out = tmp_path / "budget.json"
    run_benchmark(
        "benchmarks.bench_budget",
        "--model-config",
        "tests/fixtures/upstream/peaknet_tiny.yaml",
        "--warmup-shape",
        "2",
        "64",
        "96",
        "--max-batch-panels",
        "16",
        "--no-mask-cap",
        "--frames",
        "1",
        "--repeats",
        "1",
        "--out",
        str(out),
    )
    result = json.loads(out.read_text())
    assert result["calibration"]["shapes"] == [[1, 64, 96], [8, 64, 96]]
    assert result["calibration"]["seconds_per_mpixel"] > 0
    (row,) = result["rows"]
    assert row["panels"] == [16, 352, 384] and row["measured_s"] > 0
    assert row["estimate_over_measured"] == pytest.approx(row["estimate_s"] / row["measured_s"])
    assert out.with_suffix(".md").read_text().count("|") > 10
