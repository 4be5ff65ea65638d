"""PeakNet architecture: key/shape compatibility and numerical parity with the public implementation,
reduced precision, the stride-4 head split and peak score, memory formats and input checks.

References in tests/fixtures/ were produced by the public implementation (see tests/fixtures/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peaknet_serve.checkpoint import load_config, load_peaknet
from peaknet_serve.model import PeakNet, PeakNetConfig, count_parameters
from peaknet_serve.model.convnextv2 import GlobalResponseNorm

REPO = Path(__file__).resolve().parents[2]
LOCAL_UPSTREAM = REPO / "tests" / "fixtures" / "upstream"
LOCAL_EXTRA = REPO / "tests" / "fixtures" / "upstream_extra"
SHARED_UPSTREAM = Path(__file__).parents[2].parent / "shared" / "fixtures" / "upstream"

TINY = "peaknet_tiny"
EXTRA_CASES = ("learned_upsample", "multichannel")


def relative_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual.astype(np.float64) - expected) / np.linalg.norm(expected))


def reference(folder: Path, name: str) -> tuple[Path, torch.Tensor, np.ndarray]:
    """(yaml path, input tensor, expected float32 logits) of one upstream reference case."""
    return (
        folder / f"{name}.yaml",
        torch.from_numpy(np.load(folder / f"{name}_input.npy")),
        np.load(folder / f"{name}_logits.npy"),
    )


@pytest.fixture(params=["repo copy", "shared"])
def upstream_dir(request) -> Path:
    """The tiny fixture from the repository's copy and, when present, from ../shared."""
    if request.param == "shared":
        if not SHARED_UPSTREAM.is_dir():
            pytest.skip(f"shared fixtures not present at {SHARED_UPSTREAM}")
        return SHARED_UPSTREAM
    return LOCAL_UPSTREAM


ALL_CASES = [(LOCAL_UPSTREAM, TINY), *((LOCAL_EXTRA, name) for name in EXTRA_CASES)]
CASE_IDS = [TINY, *EXTRA_CASES]


@pytest.fixture(scope="module")
def tiny_model() -> PeakNet:
    return load_peaknet(LOCAL_UPSTREAM / f"{TINY}.yaml")


# --------------------------------------------------------------------------------------------
# Compatibility with the public implementation
# --------------------------------------------------------------------------------------------


def test_state_dict_keys_and_shapes_equal_upstream(upstream_dir: Path) -> None:
    expected = json.loads((upstream_dir / f"{TINY}_keys.json").read_text())
    config, _ = load_config(upstream_dir / f"{TINY}.yaml")
    actual = {key: list(value.shape) for key, value in PeakNet(config).state_dict().items()}
    assert set(actual) == set(expected)
    assert actual == expected


def test_float32_logits_match_upstream_tiny(upstream_dir: Path) -> None:
    config_path, x, expected = reference(upstream_dir, TINY)
    model = load_peaknet(config_path)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == expected.shape
    assert logits.dtype == torch.float32
    assert relative_l2(logits.numpy(), expected) <= 1e-4


@pytest.mark.parametrize("name", EXTRA_CASES)
def test_float32_logits_match_upstream_other_configs(name: str) -> None:
    """Learned upsample, 2-3 BiFPN blocks, 2 input channels, 3 classes, non-square inputs."""
    config_path, x, expected = reference(LOCAL_EXTRA, name)
    model = load_peaknet(config_path)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == expected.shape
    assert relative_l2(logits.numpy(), expected) <= 1e-4


def test_extra_configs_cover_what_they_claim() -> None:
    learned, _ = load_config(LOCAL_EXTRA / "learned_upsample.yaml")
    multi, _ = load_config(LOCAL_EXTRA / "multichannel.yaml")
    assert learned.uses_learned_upsample and learned.bifpn_num_blocks == 3
    assert multi.num_channels == 2 and multi.num_classes == 3 and multi.bifpn_num_blocks == 2
    for name in EXTRA_CASES:
        shape = np.load(LOCAL_EXTRA / f"{name}_input.npy").shape
        assert shape[-2] != shape[-1]


# --------------------------------------------------------------------------------------------
# Structure of other configurations
# --------------------------------------------------------------------------------------------


def test_structure_follows_config() -> None:
    config = PeakNetConfig(
        num_channels=3,
        num_classes=4,
        backbone_hidden_sizes=(8, 16, 24, 32),
        backbone_depths=(1, 2, 3, 1),
        bifpn_num_blocks=3,
        bifpn_num_features=16,
        seg_out_channels=64,
        uses_learned_upsample=True,
    )
    state = PeakNet(config).state_dict()
    assert state["backbone.embeddings.patch_embeddings.weight"].shape == (8, 3, 4, 4)
    for stage, depth in enumerate(config.backbone_depths):
        layers = {k.split(".")[5] for k in state if k.startswith(f"backbone.encoder.stages.{stage}.layers.")}
        assert len(layers) == depth
    assert {k.split(".")[2] for k in state if k.startswith("bifpn.blocks.")} == {"0", "1", "2"}
    assert state["head_segmask.weight"].shape == (4, 64, 1, 1)
    assert state["head_upsample_layer.0.weight"].shape == (64, 4, 6, 6)
    assert state["head_upsample_layer.0.bias"].shape == (4,)
    assert "backbone.encoder.stages.0.downsampling_layer.0.weight" not in state


@pytest.mark.parametrize(
    ("path", "expected_millions"), [("configs/peaknet-33m.yaml", 33.2), ("configs/peaknet-673m.yaml", 673.0)]
)
def test_shipped_configs_have_their_advertised_size(path: str, expected_millions: float) -> None:
    config, weights = load_config(REPO / path)
    assert weights is None
    with torch.device("meta"):
        model = PeakNet(config)
    assert count_parameters(model) / 1e6 == pytest.approx(expected_millions, abs=0.05)


@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (2, 1, 32, 96), (1, 1, 128, 32)])
def test_output_and_feature_shapes(shape: tuple[int, ...], learned: bool) -> None:
    config = PeakNetConfig(
        backbone_hidden_sizes=(8, 16, 16, 32),
        backbone_depths=(1, 1, 1, 1),
        bifpn_num_blocks=2,
        bifpn_num_features=16,
        seg_out_channels=32,
        uses_learned_upsample=learned,
    )
    model = PeakNet(config).eval()
    x = torch.randn(shape)
    batch, _, height, width = shape
    with torch.no_grad():
        features = model.forward_features(x)
        assert [tuple(f.shape) for f in features] == [(batch, 16, height // s, width // s) for s in (4, 8, 16, 32)]
        assert model.forward_head(features, upsample=False).shape == (batch, 2, height // 4, width // 4)
        assert model(x).shape == (batch, 2, height, width)
        assert model.forward_peak_score(x).shape == (batch, 1, height, width)


# --------------------------------------------------------------------------------------------
# Head split and peak score
# --------------------------------------------------------------------------------------------


def test_full_logits_are_bilinear_upsample_of_stride4_logits(tiny_model: PeakNet) -> None:
    _, x, _ = reference(LOCAL_UPSTREAM, TINY)
    with torch.no_grad():
        low = tiny_model.forward_head(tiny_model.forward_features(x), upsample=False)
        full = tiny_model(x)
    upsampled = F.interpolate(low, scale_factor=4, mode="bilinear", align_corners=False)
    torch.testing.assert_close(full, upsampled, rtol=0, atol=0)


@pytest.mark.parametrize(("folder", "name"), [(LOCAL_UPSTREAM, TINY), (LOCAL_EXTRA, "learned_upsample")])
def test_peak_score_agrees_with_argmax(folder: Path, name: str) -> None:
    config_path, x, _ = reference(folder, name)
    model = load_peaknet(config_path)
    with torch.no_grad():
        logits = model(x)
        score = model.forward_peak_score(x)[:, 0]
    difference = logits[:, 1] - logits[:, 0]
    torch.testing.assert_close(score, difference, rtol=1e-5, atol=1e-5)
    disagree = (score > 0) != (logits.argmax(dim=1) == 1)
    # Only exact (rounding-level) ties may disagree.
    assert bool((difference[disagree].abs() < 1e-5).all())


def test_peak_score_needs_two_classes() -> None:
    model = PeakNet(
        PeakNetConfig(
            num_classes=3,
            backbone_hidden_sizes=(8, 8, 8, 8),
            backbone_depths=(1, 1, 1, 1),
            bifpn_num_blocks=1,
            bifpn_num_features=8,
            seg_out_channels=32,
        )
    )
    with pytest.raises(ValueError, match="2-class"):
        model.forward_peak_score(torch.zeros(1, 1, 32, 32))


# --------------------------------------------------------------------------------------------
# Reduced precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize(("folder", "name"), [(LOCAL_UPSTREAM, TINY), (LOCAL_EXTRA, "learned_upsample")])
def test_reduced_precision_close_to_float32(folder: Path, name: str, dtype: str) -> None:
    config_path, x, expected = reference(folder, name)
    model = load_peaknet(config_path, dtype=dtype)
    target = getattr(torch, dtype)
    assert {p.dtype for p in model.parameters()} == {target}
    assert all(b.dtype in (target, torch.bool) for b in model.buffers())
    with torch.no_grad():
        logits = model(x)  # float32 input is cast to the model's dtype
    assert logits.dtype == target
    actual = logits.float().numpy()
    assert relative_l2(actual, expected) <= 2e-2
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.99


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grn_statistics_do_not_overflow_in_half_precision(dtype: torch.dtype) -> None:
    """Sum of squares over a 128x128 map of 300s is ~1.5e9: far beyond float16's 65504."""
    grn = GlobalResponseNorm(8)
    with torch.no_grad():
        grn.weight.normal_()
        grn.bias.normal_()
    x = 300 + torch.rand(1, 128, 128, 8)
    expected = grn(x)
    actual = grn.to(dtype)(x.to(dtype))
    assert actual.dtype == dtype
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual.float(), expected, rtol=2e-2, atol=2e-2 * 300)


# --------------------------------------------------------------------------------------------
# Memory format, compilation, input checks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_channels_last_gives_same_logits(dtype: str) -> None:
    _, x, _ = reference(LOCAL_UPSTREAM, TINY)
    model = load_peaknet(LOCAL_UPSTREAM / f"{TINY}.yaml", dtype=dtype)
    with torch.no_grad():
        expected = model(x).float().numpy()
        model = model.to(memory_format=torch.channels_last)
        assert model.head_segmask.weight.is_contiguous(memory_format=torch.channels_last)
        logits = model(x.contiguous(memory_format=torch.channels_last))
    tolerance = 1e-4 if dtype == "float32" else 2e-2
    assert relative_l2(logits.float().numpy(), expected) <= tolerance


def test_traces_as_one_graph(tiny_model: PeakNet) -> None:
    """No data-dependent Python control flow or .item(): torch.compile captures a single graph."""
    _, x, _ = reference(LOCAL_UPSTREAM, TINY)
    torch._dynamo.reset()
    with torch.no_grad():
        logits = torch.compile(tiny_model, backend="eager", fullgraph=True)(x)
        score = torch.compile(tiny_model.forward_peak_score, backend="eager", fullgraph=True)(x)
        torch.testing.assert_close(logits, tiny_model(x))
        torch.testing.assert_close(score, tiny_model.forward_peak_score(x))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 64, 80), "multiples of 32"),
        ((1, 1, 48, 64), "multiples of 32"),
        ((1, 2, 64, 64), "1 channel"),
        ((1, 64, 64), r"\(B, C, H, W\)"),
    ],
)
def test_rejects_bad_inputs(tiny_model: PeakNet, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model(torch.zeros(shape))


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_config_defaults_are_the_pipeline_defaults() -> None:
    config = PeakNetConfig.from_mapping({})
    assert config.backbone_hidden_sizes == (96, 192, 384, 768)
    assert config.backbone_depths == (3, 3, 9, 3)
    assert (config.bifpn_num_blocks, config.bifpn_num_features, config.seg_out_channels) == (2, 256, 256)
    assert not config.uses_learned_upsample


def test_config_round_trips_through_mapping() -> None:
    config = PeakNetConfig(backbone_depths=[1, 2, 3, 4], uses_learned_upsample=True)
    assert PeakNetConfig.from_mapping(config.as_mapping()) == config


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"bifpn_num_block": 2}, "unknown PeakNet config key"),
        ({"backbone_depths": [3, 3, 9]}, "backbone_depths must be 4"),
        ({"backbone_hidden_sizes": [96, 192, 0, 768]}, "backbone_hidden_sizes"),
        ({"seg_out_channels": 48}, "multiple of 32"),
        ({"num_classes": 0}, "num_classes"),
        ({"uses_learned_upsample": "yes"}, "true or false"),
    ],
)
def test_config_rejects_bad_values(mapping: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PeakNetConfig.from_mapping(mapping)
