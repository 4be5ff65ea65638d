"""Float8 pointwise layers: quantisation, conversion (which layers, where refused) on the CPU; the
float8 GEMM's error and a converted trained PeakNet's peak masks on a CUDA GPU of capability >= 8.9."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.model import float8
from peaknet_serve.model.convnextv2 import ConvNextV2Layer
from peaknet_serve.model.float8 import (
    E4M3_MAX,
    Float8Linear,
    convert_pointwise_to_float8,
    float8_unsupported_reason,
    qualifying_pointwise_layers,
    quantize_rowwise,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "upstream" / "peaknet_tiny.yaml"  # hidden 16/32/64/128, depths 1/1/2/1
BUNDLED = ROOT / "model_store" / "peaknet" / "peaknet.yaml"  # the trained model: hidden 32/64/128/256

#: e4m3 keeps 3 mantissa bits: round-to-nearest is within 2**-4 of a normal value; below the
#: smallest normal (2**-6 of the scale unit) the absolute step is 2**-9, half of it 2**-10.
E4M3_RELATIVE = 2.0**-4
E4M3_SUBNORMAL_HALF_STEP = 2.0**-10


def assert_within_e4m3(x: torch.Tensor, dequantized: torch.Tensor, scale: torch.Tensor) -> None:
    """Each element of ``dequantized`` within e4m3 rounding of ``x`` (rows scaled by ``scale``)."""
    bound = E4M3_RELATIVE * x.abs() + E4M3_SUBNORMAL_HALF_STEP * scale + 1e-30
    assert torch.all((x - dequantized).abs() <= bound * (1 + 1e-6))


def cpu_scaled_mm_available() -> bool:
    """Whether this PyTorch runs ``torch._scaled_mm`` with rowwise scales on the CPU (newer ones do)."""
    try:
        a = torch.zeros(16, 16, dtype=torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError, AttributeError, TypeError):
        return False
    return True


# ------------------------------------------------------------------------------------------
# Quantisation (CPU)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rowwise_quantisation_is_within_e4m3_rounding(dtype):
    generator = torch.Generator().manual_seed(0)
    magnitudes = torch.logspace(-3, 3, 64).reshape(64, 1)  # rows of very different scales
    x = (torch.randn(64, 96, generator=generator) * magnitudes).to(dtype)
    q, scale = quantize_rowwise(x)
    assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == (64, 1)
    x32 = x.float()
    torch.testing.assert_close(scale, x32.abs().amax(dim=1, keepdim=True) / E4M3_MAX)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((64,), E4M3_MAX))  # each row's amax hits 448
    assert_within_e4m3(x32, q.float() * scale, scale)


def test_zero_rows_quantise_to_zero_with_a_finite_scale():
    x = torch.zeros(3, 32)
    x[1, 5] = -2.0
    q, scale = quantize_rowwise(x)
    assert torch.all(torch.isfinite(scale)) and torch.all(scale > 0)
    assert torch.equal(q[0].float(), torch.zeros(32)) and torch.equal(q[2].float(), torch.zeros(32))
    assert q[1, 5].float() * scale[1, 0] == -2.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_from_linear_quantises_the_weight_per_output_channel(dtype):
    torch.manual_seed(1)
    linear = nn.Linear(64, 48).to(dtype)
    with torch.no_grad():
        linear.weight.mul_(torch.logspace(-2, 2, 48).reshape(48, 1).to(dtype))  # channels of different scales
    layer = Float8Linear.from_linear(linear)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight.shape == (48, 64)
    assert layer.weight_scale.shape == (1, 48) and layer.weight_scale.dtype == torch.float32
    assert not list(layer.parameters())  # inference only: buffers
    weight = linear.weight.detach().float()
    torch.testing.assert_close(layer.weight_scale.reshape(-1), weight.abs().amax(dim=1) / E4M3_MAX)
    assert_within_e4m3(weight, layer.dequantized_weight(), layer.weight_scale.reshape(-1, 1))
    assert layer.bias.dtype == torch.bfloat16
    torch.testing.assert_close(layer.bias.float(), linear.bias.detach().to(torch.bfloat16).float())
    assert layer.output_dtype == (dtype if dtype != torch.float32 else torch.bfloat16)


def test_from_linear_pads_unaligned_shapes_with_zeros():
    linear = nn.Linear(20, 24, bias=False)
    layer = Float8Linear.from_linear(linear)
    assert layer.weight.shape == (32, 32)  # N and K rounded up to multiples of 16
    assert torch.equal(layer.weight[24:].float(), torch.zeros(8, 32))
    assert torch.equal(layer.weight[:, 20:].float(), torch.zeros(32, 12))
    assert torch.equal(layer.bias.float(), torch.zeros(32))  # no bias: zeros
    assert layer.dequantized_weight().shape == (24, 20)


def test_output_dtype_must_be_reduced():
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        Float8Linear(32, 32, output_dtype=torch.float32)


@pytest.mark.skipif(not cpu_scaled_mm_available(), reason="this PyTorch has no CPU torch._scaled_mm")
@pytest.mark.parametrize(
    ("in_features", "out_features", "dtype", "expected"),
    [
        (64, 32, torch.bfloat16, torch.bfloat16),
        (20, 24, torch.float16, torch.float16),  # padded K and N
        (48, 80, torch.float32, torch.bfloat16),  # a float32 input (LayerNorm under autocast): the reduced dtype
    ],
)
def test_forward_matches_the_dequantised_product(in_features, out_features, dtype, expected):
    torch.manual_seed(2)
    linear = nn.Linear(in_features, out_features)
    layer = Float8Linear.from_linear(linear)
    x = torch.randn(2, 5, 7, in_features).to(dtype)
    out = layer(x)
    assert out.shape == (2, 5, 7, out_features) and out.dtype == expected
    q, scale = quantize_rowwise(x.reshape(-1, in_features))
    reference = (q.float() * scale) @ layer.dequantized_weight().T + layer.bias[:out_features].float()
    torch.testing.assert_close(out.float().reshape(-1, out_features), reference, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------------------
# Conversion (CPU)
# ------------------------------------------------------------------------------------------


class Mixed(nn.Module):
    """Two blocks, one of unaligned width, and a linear outside any block."""

    def __init__(self) -> None:
        super().__init__()
        self.aligned = ConvNextV2Layer(32)  # 32 -> 128 -> 32
        self.unaligned = ConvNextV2Layer(24)  # 24 -> 96 -> 24: 24 is no multiple of 16
        self.head = nn.Linear(64, 64)


def test_qualifying_layers_are_the_aligned_convnext_mlp_linears():
    model = Mixed()
    assert qualifying_pointwise_layers(model) == ["aligned.pwconv1", "aligned.pwconv2"]
    assert qualifying_pointwise_layers(model, min_features=64) == []  # both have a 32-wide side
    tiny = load_peaknet(TINY)
    names = qualifying_pointwise_layers(tiny)
    assert len(names) == 2 * 5 and all(n.endswith(("pwconv1", "pwconv2")) for n in names)
    # min_features picks stages: 16/32/64/128 channels, MLPs C -> 4C -> C
    assert len(qualifying_pointwise_layers(tiny, min_features=32)) == 2 * 4
    assert qualifying_pointwise_layers(tiny, min_features=128) == [
        "backbone.encoder.stages.3.layers.0.pwconv1",
        "backbone.encoder.stages.3.layers.0.pwconv2",
    ]


def test_conversion_refuses_the_cpu_and_leaves_the_model_alone():
    model = load_peaknet(TINY)
    with pytest.raises(RuntimeError, match="need a CUDA GPU; the model is on cpu"):
        convert_pointwise_to_float8(model)
    assert not any(isinstance(m, Float8Linear) for m in model.modules())
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        convert_pointwise_to_float8(Mixed())  # refused even where nothing would be swapped


def test_old_gpus_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    reason = float8_unsupported_reason("cuda")
    assert reason is not None and ">= 8.9" in reason and "NVIDIA A100 has 8.0" in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert float8_unsupported_reason("cuda") is None
    assert float8_unsupported_reason("cpu") is not None


def test_conversion_swaps_exactly_the_qualifying_layers(monkeypatch):
    monkeypatch.setattr(float8, "require_float8", lambda device: None)  # the swap itself runs anywhere
    model = Mixed()
    head = model.head
    assert convert_pointwise_to_float8(model) == 2
    assert isinstance(model.aligned.pwconv1, Float8Linear) and isinstance(model.aligned.pwconv2, Float8Linear)
    assert (model.aligned.pwconv1.in_features, model.aligned.pwconv1.out_features) == (32, 128)
    assert type(model.unaligned.pwconv1) is nn.Linear and type(model.unaligned.pwconv2) is nn.Linear
    assert model.head is head
    assert convert_pointwise_to_float8(model) == 0  # converted layers are not converted again
    tiny = load_peaknet(TINY)
    assert convert_pointwise_to_float8(tiny, min_features=64) == 2 * 3
    assert sum(isinstance(m, Float8Linear) for m in tiny.modules()) == 2 * 3


def test_bench_mode_fast_fp8_is_fast_with_float8_linears():
    from benchmarks.bench_model import MODES

    assert MODES["fast_fp8"].serving == MODES["fast"].serving and MODES["fast_fp8"].lean
    assert MODES["fast_fp8"].float8 and not any(mode.float8 for name, mode in MODES.items() if name != "fast_fp8")


def test_bench_prepare_mode_converts_after_the_cast_and_refuses_the_cpu(monkeypatch):
    from benchmarks.bench_model import MODES, prepare_mode

    base = torch.zeros(1, 1, 64, 96)
    with pytest.raises(RuntimeError, match="need a CUDA GPU; the model is on cpu"):
        prepare_mode(TINY, MODES["fast_fp8"], base, torch.device("cpu"))
    monkeypatch.setattr(float8, "require_float8", lambda device: None)  # the swap itself runs anywhere
    model, x, _ = prepare_mode(TINY, MODES["fast_fp8"], base, torch.device("cpu"))
    layers = [m for m in model.modules() if isinstance(m, Float8Linear)]
    assert len(layers) == len(qualifying_pointwise_layers(load_peaknet(TINY))) == 2 * 5
    assert all(layer.weight.dtype == torch.float8_e4m3fn and layer.output_dtype == torch.bfloat16 for layer in layers)
    assert x.dtype == torch.bfloat16
    plain, _, _ = prepare_mode(TINY, MODES["fast"], base, torch.device("cpu"))
    assert not any(isinstance(m, Float8Linear) for m in plain.modules())


# ------------------------------------------------------------------------------------------
# CUDA, compute capability >= 8.9
# ------------------------------------------------------------------------------------------

needs_float8_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or float8_unsupported_reason("cuda") is not None,
    reason="needs a CUDA GPU with float8 GEMMs (compute capability >= 8.9)",
)


def relative_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """RMS(actual - expected) / RMS(expected), in float32."""
    actual, expected = actual.float(), expected.float()
    return float((actual - expected).square().mean().sqrt() / expected.square().mean().sqrt())


@pytest.mark.gpu
@needs_float8_gpu
@pytest.mark.parametrize(
    ("in_features", "out_features", "dtype"),
    [(256, 1024, torch.bfloat16), (1024, 256, torch.bfloat16), (96, 384, torch.float16), (40, 24, torch.bfloat16)],
)
def test_cuda_float8_linear_is_close_to_the_reduced_precision_linear(in_features, out_features, dtype):
    torch.manual_seed(3)
    linear = nn.Linear(in_features, out_features).to("cuda", dtype)
    layer = Float8Linear.from_linear(linear)
    x = torch.randn(4, 33, 47, in_features, device="cuda", dtype=dtype)  # M = 6204, no multiple of 16
    with torch.inference_mode():
        expected = linear(x)
        out = layer(x)
    assert out.shape == expected.shape and out.dtype == dtype
    error = relative_rms_error(out, expected)
    assert 1e-4 < error < 0.1, error  # e4m3 operands: a few percent, not the bf16 GEMM's ~0.3%


@pytest.mark.gpu
@needs_float8_gpu
def test_cuda_float8_linear_under_autocast_returns_the_autocast_dtype():
    torch.manual_seed(4)
    norm = nn.LayerNorm(192).cuda()
    linear = nn.Linear(192, 768).to("cuda", torch.bfloat16)
    layer = Float8Linear.from_linear(linear)
    x = torch.randn(2048, 192, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        normed = norm(x)  # float32 under autocast
        expected, out = linear(normed), layer(normed)
    assert normed.dtype == torch.float32 and expected.dtype == out.dtype == torch.bfloat16
    assert relative_rms_error(out, expected) < 0.1


@pytest.mark.gpu
@needs_float8_gpu
def test_cuda_float8_block_compiles_in_one_graph_and_matches_eager():
    torch.manual_seed(5)
    block = ConvNextV2Layer(96)
    with torch.no_grad():
        block.grn.weight.normal_(0.0, 0.5)
    block = block.to("cuda", torch.bfloat16).to(memory_format=torch.channels_last).eval()
    x = torch.randn(4, 96, 44, 48, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = block(x) - x
    assert convert_pointwise_to_float8(block) == 2
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, dynamic=False)  # fullgraph: a graph break is an error
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager_out = block(x) - x
        compiled_out = compiled(x) - x
    assert relative_rms_error(eager_out, reference) < 0.1
    assert relative_rms_error(compiled_out, reference) < 0.1
    # the same quantisation, fused: only elements whose fused-kernel inputs round differently differ
    assert relative_rms_error(compiled_out, eager_out) < 0.05


def simulated_epix_frames(count: int) -> list[np.ndarray]:
    """``count`` (16, 352, 384) float32 ADU frames, from frame 1 of the ePix10k2M held-out sequence."""
    from peaknet_serve.eval import evaluate
    from peaknet_serve.sim.peaksim.frame import simulate_frame
    from peaknet_serve.sim.peaksim.geometry import get_geometry

    geometry = get_geometry("epix10k2m")
    seeds = ([20240, evaluate.GEOMETRY_INDEX["epix10k2m"], index] for index in range(1, 1 + count))
    return [simulate_frame(geometry, np.random.default_rng(seed)).adu for seed in seeds]


def peak_mask(forward, adu: np.ndarray, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """(P, H, W) bool peak mask of ``forward`` (the network's peak score) as the finder computes it."""
    from peaknet_serve.device.peaks import peak_mask_from_score
    from peaknet_serve.device.preprocess import network_input, sanitize

    image, _ = sanitize(torch.from_numpy(adu).cuda())
    x = network_input(image, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        score = forward(x)
    return peak_mask_from_score(score[:, 0, : adu.shape[1], : adu.shape[2]])


@pytest.mark.gpu
@needs_float8_gpu
@pytest.mark.skipif(not BUNDLED.is_file(), reason="bundled model not present (model_store/peaknet)")
def test_cuda_float8_peaknet_agrees_with_float32_on_simulated_frames():
    """The trained bundled model, compiled in bf16 as served, with its MLP linears converted to
    float8, against float32: the peak masks pixel by pixel, and the peak lists (matched within 1 px
    over their union, as ``peaknet-evaluate`` reports precision agreement); the IoU of the peak
    pixels is reported."""
    from peaknet_serve.config.settings import HandlerSettings
    from peaknet_serve.eval.runner import agreement_counts, agreement_summary, evaluation_finder, find_frame_peaks
    from peaknet_serve.pipeline import build_finder

    cuda = torch.device("cuda")
    settings = HandlerSettings.from_mapping(
        {
            "config": str(BUNDLED),
            "precision": "bf16",
            "compile": True,
            "channels_last": True,
            "compile_cache": False,
            "depthwise_padding": False,
            "warmup": False,
            "max_batch_panels": 16,
        },
        env={},
    )
    torch._dynamo.reset()
    pipeline = build_finder(settings, cuda)  # nothing runs the network: no warm-up, cache or tuning
    assert pipeline.mode.compile == "default" and pipeline.mode.dtype == torch.bfloat16
    model = pipeline.model
    # in place, before the first call: torch.compile traces the converted modules then
    assert convert_pointwise_to_float8(model) == 2 * sum(model.config.backbone_depths)
    reference = evaluation_finder(BUNDLED, "float32", cuda, None, 16)

    counts = {"matched": 0, "only_reference": 0, "only_other": 0}
    same_pixels = pixels = both = either = 0
    for adu in simulated_epix_frames(2):
        expected = peak_mask(reference.forward, adu, torch.float32, False)
        mask = peak_mask(pipeline.finder.forward, adu, torch.bfloat16, True)
        same_pixels += int((mask == expected).sum())
        pixels += mask.numel()
        both += int((mask & expected).sum())
        either += int((mask | expected).sum())
        for key, value in agreement_counts(
            find_frame_peaks(reference, adu), find_frame_peaks(pipeline.finder, adu)
        ).items():
            counts[key] += value
    peaks = agreement_summary(counts)
    measured = {"pixel_agreement": same_pixels / pixels, "peak_pixel_iou": both / either, **peaks}
    assert counts["matched"] > 50, measured  # the frames have peaks to agree on
    assert measured["pixel_agreement"] >= 0.99, measured
    assert measured["agreement"] >= 0.99, measured  # the acceptance bar: peaks agree >= 99% with float32
