"""peaknet_serve.model.seg_head: the coarse branches summed and projected at stride 8 equal the
public PeakNet's order (every branch upsampled, then summed) up to rounding, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peaknet_serve.model.peaknet import PeakNet, PeakNetConfig
from peaknet_serve.model.seg_head import (
    SegLateralLayer,
    build_lateral_layers,
    fuse_pyramid,
    project_parts,
    split_pyramid,
)

STRIDES = (4, 8, 16, 32)


def pyramid(channels: int, height: int, width: int, batch: int = 2) -> list[torch.Tensor]:
    """Random float64 maps at strides 4, 8, 16, 32 of a (height, width) image."""
    generator = torch.Generator().manual_seed(1)
    return [
        torch.randn(batch, channels, height // s, width // s, generator=generator, dtype=torch.float64) for s in STRIDES
    ]


@pytest.fixture
def lateral_layers():
    torch.manual_seed(0)
    return build_lateral_layers(STRIDES, in_channels=6, out_channels=8, num_groups=4).double().eval()


def test_a_branch_is_its_last_upsample_of_what_comes_before():
    torch.manual_seed(0)
    layer = SegLateralLayer(4, 4, num_groups=2, num_upsamplings=3).double().eval()
    x = torch.randn(1, 4, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        before = layer.forward_before_last_upsample(x)
        assert before.shape == (1, 4, 12, 20)
        expected = F.interpolate(before, scale_factor=2.0, mode="bilinear", align_corners=False)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_a_branch_without_upsample_is_the_same_either_way():
    torch.manual_seed(0)
    layer = SegLateralLayer(4, 4, num_groups=2, num_upsamplings=0).double().eval()
    x = torch.randn(1, 4, 6, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer.forward_before_last_upsample(x), layer(x), rtol=0, atol=0)


def test_summing_at_stride_8_equals_the_public_order(lateral_layers):
    features = pyramid(6, 64, 96)
    with torch.no_grad():
        fine, coarse = split_pyramid(lateral_layers, features)
        reordered = fuse_pyramid(lateral_layers, features)
        public = fuse_pyramid(lateral_layers, features, sum_before_upsample=False)
    assert fine.shape == (2, 8, 16, 24) and coarse.shape == (2, 8, 8, 12)
    assert public.shape == reordered.shape == (2, 8, 16, 24)
    torch.testing.assert_close(reordered, public, rtol=0, atol=1e-12)


def test_the_projection_at_stride_8_equals_the_conv_of_the_fused_map(lateral_layers):
    features = pyramid(6, 64, 96)
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(2, 8, 1, 1, generator=generator, dtype=torch.float64)
    bias = torch.randn(2, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        expected = F.conv2d(fuse_pyramid(lateral_layers, features, sum_before_upsample=False), weight, bias)
        actual = project_parts(*split_pyramid(lateral_layers, features), weight, bias)
    assert actual.shape == (2, 2, 16, 24)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_the_reorder_changes_the_answer_only_by_rounding_in_float32(lateral_layers):
    """In float32 the two orders differ (other roundings) but by far less than the values."""
    layers = lateral_layers.float()
    features = [f.float() for f in pyramid(6, 64, 96)]
    with torch.no_grad():
        reordered = fuse_pyramid(layers, features)
        public = fuse_pyramid(layers, features, sum_before_upsample=False)
    torch.testing.assert_close(reordered, public, rtol=1e-5, atol=1e-5)


def test_mismatched_levels_are_refused(lateral_layers):
    features = pyramid(6, 64, 96)[:3]
    for fuse in (split_pyramid, fuse_pyramid):
        with pytest.raises(ValueError, match="3 feature maps for 4 lateral layers"):
            fuse(lateral_layers, features)
    with pytest.raises(ValueError, match="3 feature maps for 4 lateral layers"):
        fuse_pyramid(lateral_layers, features, sum_before_upsample=False)


@pytest.mark.parametrize("learned", [False, True])
def test_peaknet_heads_equal_the_public_order(learned):
    """Logits (full and stride 4) and the served peak score, float64 head on float32 features."""
    config = PeakNetConfig(
        backbone_hidden_sizes=(8, 16, 32, 64),
        backbone_depths=(1, 1, 1, 1),
        bifpn_num_blocks=1,
        bifpn_num_features=32,
        seg_out_channels=32,
        uses_learned_upsample=learned,
    )
    torch.manual_seed(0)
    model = PeakNet(config).eval()
    assert model.sum_before_upsample
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        features = [f.double() for f in model.forward_features(x)]
        model.double()
        outputs = {}
        for order in (True, False):
            model.sum_before_upsample = order
            outputs[order] = (
                model.forward_head(features),
                model.forward_head(features, upsample=False),
                model.forward_peak_score_head(features),
            )
    for reordered, public in zip(outputs[True], outputs[False], strict=True):
        torch.testing.assert_close(reordered, public, rtol=0, atol=1e-11)
