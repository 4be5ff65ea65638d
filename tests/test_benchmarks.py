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
    assert all(r["gpu_reserved_mb"] is None for r in rows)  # the gauge is published by CUDA workers only
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize("name,kind", [
    # Inductor names list the fused ATen ops, convolutions and dtype conversions included.
    ("triton_poi_fused__to_copy__unsafe_index_add_clone_convolution_gelu_mul_native_group_norm_sub_view_71",
     "fused (Inductor/Triton)"),
    ("triton_red_fused_convolution_native_layer_norm_permute_0", "fused (Inductor/Triton)"),
    ("sm80_xmma_fprop_implicit_gemm_indexed_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize64x64x64_stage4", "convolution"),
    ("void tensorTransformGeneric<__nv_bfloat16, __nv_bfloat16, float, true, false, false>", "cuDNN layout transform"),
    ("conv2d_c1_k1_nhwc_specialized", "depthwise conv"),
    ("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN", "matrix multiply"),
    ("void at::native::(anonymous namespace)::upsample_bilinear2d_nhwc_out_frame<c10::BFloat16, float>", "upsample"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float, false>",
     "normalisation"),
])
def test_kernel_kinds_of_real_kernel_names(name, kind):
    from benchmarks.profile_model import kernel_kind
    assert kernel_kind(name) == kind


def test_command_line_names_the_allocator_setting(monkeypatch):
    from benchmarks import timing
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_model.py", "--device", "cuda"])
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert timing.command_line() == "python -m benchmarks.bench_model --device cuda"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert timing.command_line() == ("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
                                     "python -m benchmarks.bench_model --device cuda")


def test_explored_rewrites_compute_the_same_function():
    """The fast-path variants explored on the GPU are exact rewrites (float32, CPU)."""
    import torch

    from benchmarks.explore_fast_path import depthwise_split, depthwise_taps, fold_depthwise_1x1
    from handler.checkpoint import load_peaknet

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8)
    x = torch.randn(2, 8, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(depthwise_taps(x, conv.weight, conv.bias), conv(x), rtol=1e-5, atol=1e-5)
        for chunk in (3, 4):
            torch.testing.assert_close(depthwise_split(x, conv.weight, conv.bias, chunk), conv(x))

    model = load_peaknet(ROOT / "tests/fixtures/upstream/peaknet_tiny.yaml", random_init=True)
    image = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        expected = model.forward_peak_score(image)
        separable = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        folded = fold_depthwise_1x1(model)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in folded.modules()) < separable
        torch.testing.assert_close(folded.forward_peak_score(image), expected, rtol=1e-4, atol=1e-4)


def test_depthwise_variants_replace_the_conv_and_keep_the_mask():
    """The explored depthwise-conv variants (eager, CPU, the 33M config at 64x64) swap the conv's
    forward, in the convs they name only, and leave the peak mask as it was."""
    import torch

    from benchmarks.explore_fast_path import ORIGINAL_DEPTHWISE_FORWARD, build_variant
    from handler.model.depthwise import PaddableDepthwiseConv2d

    base = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        expected = build_variant("eager", base, torch.device("cpu"))()
        for name in ("eager_taps", "eager_dwsplit", "eager_dwnchw"):
            mask = build_variant(name, base, torch.device("cpu"))()
            assert PaddableDepthwiseConv2d.forward is not ORIGINAL_DEPTHWISE_FORWARD
            assert torch.equal(mask, expected), name
    finally:
        PaddableDepthwiseConv2d.forward = ORIGINAL_DEPTHWISE_FORWARD


def test_conv_times_lists_every_convolution_with_its_input_layout():
    import torch

    from benchmarks.explore_fast_path import conv_times

    convs = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Conv2d(16, 4, 1))
    x = torch.randn(2, 8, 20, 24)
    with torch.inference_mode():
        nchw = conv_times(lambda: convs(x))
        convs = convs.to(memory_format=torch.channels_last)
        nhwc = conv_times(lambda: convs(x.contiguous(memory_format=torch.channels_last)))
    assert sorted(c["weight"] for c in nchw) == sorted(c["weight"] for c in nhwc) == [(4, 16, 1, 1), (16, 8, 3, 3)]
    assert [c["channels_last"] for c in nchw] == [False, False]
    assert [c["channels_last"] for c in nhwc] == [True, True]
    assert {c["input"] for c in nchw} == {(2, 8, 20, 24), (2, 16, 20, 24)}
    assert all(c["gpu_ms"] >= 0 for c in nchw + nhwc)


def test_compile_options_only_with_the_default_compile_mode():
    import torch

    from benchmarks.bench_model import MODES, forward_fn

    with pytest.raises(ValueError, match="reduce-overhead"):
        forward_fn(torch.nn.Identity(), MODES["fast_graphs"], torch.zeros(1), torch.device("cpu"),
                   compile_options={"conv_1x1_as_mm": True})
