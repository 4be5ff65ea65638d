"""peaknet_serve.model.bifpn: merging a 1x1 depthwise conv into its pointwise conv is the same
function (float64 exactness; float32 rounding for the whole PeakNet), and only that case is merged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.model.bifpn import BiFPN, DepthwiseSeparableConv2d, merge_separable_convs
from peaknet_serve.model.peaknet import PeakNet, PeakNetConfig
from peaknet_serve.pipeline import load_network

SMALL = PeakNetConfig(
    backbone_hidden_sizes=(8, 16, 32, 64),
    backbone_depths=(1, 1, 1, 1),
    bifpn_num_blocks=2,
    bifpn_num_features=16,
    seg_out_channels=32,
)


def random_separable(kernel_size: int = 1, bias: bool = False) -> DepthwiseSeparableConv2d:
    torch.manual_seed(0)
    conv = DepthwiseSeparableConv2d(6, 10, kernel_size=kernel_size, bias=bias).double().eval()
    with torch.no_grad():
        conv.depthwise_conv.weight.normal_()  # not the init's narrow range: every channel scaled differently
    return conv


def test_a_merged_1x1_separable_conv_is_the_same_function():
    conv = random_separable()
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        before = conv(x)
        assert conv.merge_depthwise() is True
        after = conv(x)
    assert isinstance(conv.depthwise_conv, nn.Identity)
    assert conv.pointwise_conv.weight.shape == (10, 6, 1, 1)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)
    assert conv.merge_depthwise() is False  # already merged: nothing left to fold


@pytest.mark.parametrize(("kernel_size", "bias"), [(3, False), (1, True)])
def test_a_spatial_or_biased_depthwise_conv_is_left_alone(kernel_size, bias):
    conv = random_separable(kernel_size, bias)
    weight = conv.pointwise_conv.weight.clone()
    assert conv.merge_depthwise() is False
    assert isinstance(conv.depthwise_conv, nn.Conv2d)
    torch.testing.assert_close(conv.pointwise_conv.weight, weight, rtol=0, atol=0)


def test_a_merged_bifpn_is_the_same_function_in_float64():
    torch.manual_seed(0)
    bifpn = BiFPN(num_blocks=2, num_features=8).double().eval()
    for module in bifpn.modules():
        if isinstance(module, DepthwiseSeparableConv2d):
            with torch.no_grad():
                module.depthwise_conv.weight.normal_()
    features = [torch.randn(2, 8, 32 // 2**i, 48 // 2**i, dtype=torch.float64) for i in range(4)]
    with torch.no_grad():
        before = bifpn(features)
        assert merge_separable_convs(bifpn) == 2 * 6  # per block: 3 top-down + 3 bottom-up refinements
        after = bifpn(features)
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert merge_separable_convs(bifpn) == 0


def test_a_merged_peaknet_scores_as_before_in_float32():
    torch.manual_seed(0)
    model = PeakNet(SMALL).eval()
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        before = model.forward_peak_score(x)
        merge_separable_convs(model)
        after = model.forward_peak_score(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * before.abs().max().item())


def test_the_serving_mode_merges_on_cuda_only_and_the_setting_switches_it_off():
    settings = HandlerSettings.from_mapping(None, env={})
    assert settings.merge_separable is True
    assert ServingMode.from_settings(settings, torch.device("cpu"), env={}).merge_separable is False
    off = HandlerSettings.from_mapping({"merge_separable": True}, env={"PEAKNET_MERGE_SEPARABLE": "false"})
    assert off.merge_separable is False
    assert "separable convs merged" in ServingMode(merge_separable=True).describe()


@pytest.mark.parametrize("merge", [False, True])
def test_load_network_merges_when_the_mode_says_so(merge):
    model = load_network(SMALL, None, ServingMode(merge_separable=merge), torch.device("cpu"), random_init=True)
    merged = [
        isinstance(m.depthwise_conv, nn.Identity) for m in model.modules() if isinstance(m, DepthwiseSeparableConv2d)
    ]
    assert len(merged) == 12 and set(merged) == {merge}
