"""peaknet_serve.model.resize: gather-free integer upsampling equals F.interpolate, and the model
takes it only with PEAKNET_RESIZE=blend inside traced graphs (eager runs stay F.interpolate, bit
for bit; the default, interpolate, keeps F.interpolate everywhere)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.model import resize
from peaknet_serve.model.resize import bilinear, phase_taps, resize_mode, upsample_bilinear_int
from peaknet_serve.model.seg_head import SegLateralLayer

UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"

SIZES = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 7), (3, 5), (7, 4), (11, 12), (13, 9)]


def interpolate(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def assert_matches_interpolate(actual: torch.Tensor, x: torch.Tensor, factor: int) -> None:
    """float32/float64: within 1e-6 of the input's magnitude; float16/bfloat16: one unit in the
    last place of the output (both blend in float32 and round once; the summation order differs)."""
    expected = interpolate(x, factor)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = float(x.abs().max())
    if x.dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6 * scale)
    else:
        torch.testing.assert_close(actual.float(), expected.float(), rtol=2**-7, atol=1e-6 * scale)


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_equals_interpolate(factor, height, width, dtype):
    generator = torch.Generator().manual_seed(height * 100 + width)
    x = (3 * torch.randn(2, 3, height, width, generator=generator)).to(dtype)
    assert_matches_interpolate(upsample_bilinear_int(x, factor), x, factor)


@pytest.mark.parametrize("factor", [2, 4])
def test_channels_last_in_channels_last_out(factor):
    x = torch.randn(2, 16, 5, 6).contiguous(memory_format=torch.channels_last)
    actual = upsample_bilinear_int(x, factor)
    assert actual.is_contiguous(memory_format=torch.channels_last)
    assert_matches_interpolate(actual, x, factor)


@pytest.mark.parametrize("factor", [3, 5, 8])
def test_other_integer_factors_in_float64(factor):
    """Non-powers of two: PyTorch's float32 source coordinates drift from the exact taps with the
    index, so compare in float64, where its coordinates are exact to 1e-15."""
    x = torch.randn(1, 2, 9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(factor))
    torch.testing.assert_close(upsample_bilinear_int(x, factor), interpolate(x, factor), rtol=0, atol=1e-12)


def test_taps_follow_pytorch_source_coordinates():
    assert phase_taps(2) == [(-1, 0.25), (1, 0.25)]
    assert phase_taps(4) == [(-1, 0.375), (-1, 0.125), (1, 0.125), (1, 0.375)]
    assert phase_taps(3)[1] == (0, 0.0)


@pytest.mark.parametrize("factor", [1, 0, 2.5, True])
def test_rejects_non_integer_factors(factor):
    with pytest.raises(ValueError, match="integer >= 2"):
        upsample_bilinear_int(torch.zeros(1, 1, 2, 2), factor)


def test_rejects_other_inputs():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        upsample_bilinear_int(torch.zeros(1, 2, 2), 2)
    with pytest.raises(TypeError, match="floating-point"):
        upsample_bilinear_int(torch.zeros(1, 1, 2, 2, dtype=torch.int64), 2)


@pytest.mark.parametrize("factor", [2.0, 4, 0.5])
def test_eager_bilinear_is_interpolate_bit_for_bit(factor):
    x = torch.randn(2, 3, 8, 6)
    torch.testing.assert_close(bilinear(x, factor), interpolate(x, factor), rtol=0, atol=0)


def test_mode_from_the_environment():
    assert resize_mode({}) == resize_mode({"PEAKNET_RESIZE": ""}) == "interpolate"
    assert resize_mode({"PEAKNET_RESIZE": "Interpolate"}) == "interpolate"
    assert resize_mode({"PEAKNET_RESIZE": " Blend "}) == "blend"
    for unknown in ("auto", "nearest"):
        with pytest.raises(ValueError, match="PEAKNET_RESIZE"):
            resize_mode({"PEAKNET_RESIZE": unknown})


def test_process_mode_is_read_from_the_environment():
    """The process-wide mode, read once at import: F.interpolate unless PEAKNET_RESIZE=blend."""
    assert resize.RESIZE_MODE == resize_mode()


def traced_ops(fn, *args) -> list:
    """The call targets of the graph Dynamo captures from ``fn(*args)``."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(fn, backend=backend, fullgraph=True)(*args)
    torch._dynamo.reset()
    return [node.target for gm in graphs for node in gm.graph.nodes if node.op == "call_function"]


@pytest.mark.parametrize(("mode", "upsamples_interpolated"), [("blend", False), ("interpolate", True)])
def test_traced_model_upsamples_without_interpolate(monkeypatch, mode, upsamples_interpolated):
    """With blend, a traced graph keeps F.interpolate only for the BiFPN's 0.5 downsamplings."""
    monkeypatch.setattr(resize, "RESIZE_MODE", mode)
    model = load_peaknet(UPSTREAM / "peaknet_tiny.yaml")
    ops = traced_ops(model.forward_peak_score, torch.randn(1, 1, 64, 96))
    downsamples = model.config.bifpn_num_blocks * 3
    # per block 3 BiFPN upsamples; head: 0 + 0 + 1 + 2 lateral upsamples before the coarse sum,
    # its one 2x upsample and the final x4
    upsamples = model.config.bifpn_num_blocks * 3 + 3 + 1 + 1
    expected = downsamples + (upsamples if upsamples_interpolated else 0)
    assert ops.count(F.interpolate) == expected


def test_inductor_compiled_head_branch_matches_eager(monkeypatch):
    """conv -> GroupNorm -> GELU -> 2x upsample, three times, then 4x: Inductor (CPU, blend) vs eager."""
    monkeypatch.setattr(resize, "RESIZE_MODE", "blend")
    torch.manual_seed(0)
    layer = SegLateralLayer(8, 8, num_groups=4, num_upsamplings=3).eval()

    def branch(x: torch.Tensor) -> torch.Tensor:
        return resize.bilinear(layer(x), 4.0)

    x = torch.randn(2, 8, 3, 5)
    torch._dynamo.reset()
    with torch.no_grad():
        expected = branch(x)
        actual = torch.compile(branch, dynamic=False)(x)
    torch._dynamo.reset()
    assert actual.shape == (2, 8, 96, 160)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
