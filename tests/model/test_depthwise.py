"""peaknet_serve.model.depthwise: the padded depthwise conv is exact, and the tuner records what it measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.model.depthwise import PaddableDepthwiseConv2d, padded_depthwise_conv, tune_depthwise_padding

UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"


def depthwise_convs(model: nn.Module) -> list[PaddableDepthwiseConv2d]:
    return [m for m in model.modules() if isinstance(m, PaddableDepthwiseConv2d)]


@pytest.mark.parametrize("kernel", [3, 7])
@pytest.mark.parametrize(("height", "width", "size"), [(12, 20, (12, 28)), (16, 16, (24, 40)), (7, 9, (8, 9))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_padded_conv_equals_the_plain_conv(kernel, height, width, size, channels_last):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, height, width, generator=generator, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(5, 1, kernel, kernel, generator=generator, dtype=torch.float64)
    bias = torch.randn(5, generator=generator, dtype=torch.float64)
    expected = F.conv2d(x, weight, bias, padding=kernel // 2, groups=5)
    actual = padded_depthwise_conv(x, weight, bias, size)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_module_keeps_conv2d_parameters_and_pads_only_listed_sizes():
    conv = PaddableDepthwiseConv2d(4, kernel_size=7)
    plain = nn.Conv2d(4, 4, 7, padding=3, groups=4)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(conv.state_dict())
    x, other = torch.randn(2, 4, 10, 12), torch.randn(2, 4, 8, 8)
    conv.compute_sizes[(10, 12)] = (16, 16)
    torch.testing.assert_close(conv(x), plain(x))
    torch.testing.assert_close(conv(other), plain(other))
    with pytest.raises(ValueError, match="odd"):
        PaddableDepthwiseConv2d(4, kernel_size=4)


def test_padded_model_matches_upstream_logits_and_traces_as_one_graph():
    model = load_peaknet(UPSTREAM / "peaknet_tiny.yaml")
    x = torch.from_numpy(np.load(UPSTREAM / "peaknet_tiny_input.npy"))
    expected = torch.from_numpy(np.load(UPSTREAM / "peaknet_tiny_logits.npy"))
    sizes = {}

    def record(module, inputs):
        sizes[module] = tuple(inputs[0].shape[-2:])

    hooks = [conv.register_forward_pre_hook(record) for conv in depthwise_convs(model)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    for conv, (height, width) in sizes.items():
        conv.compute_sizes[(height, width)] = (height + 8, width + 16)
    torch._dynamo.reset()
    with torch.no_grad():
        logits = model(x)
        compiled = torch.compile(model, backend="eager", fullgraph=True)(x)
    relative = (logits - expected).norm() / expected.norm()
    assert relative <= 1e-4
    torch.testing.assert_close(compiled, logits)


def test_tuner_records_every_input_and_keeps_a_padding_only_when_it_gains():
    model = load_peaknet(UPSTREAM / "peaknet_tiny.yaml")
    convs = depthwise_convs(model)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        before = model(x)

    # Any measured time passes a gain threshold of 1e9: every distinct input gets padded.
    choices = tune_depthwise_padding(model, lambda: model.forward_features(x), repeats=1, min_gain=1e9)
    assert sum(choice.modules for choice in choices) == len(convs)
    assert len({choice.input_shape for choice in choices}) == len(choices)
    for choice in choices:
        height, width = choice.input_shape[-2:]
        assert choice.compute_size is not None and choice.compute_size[0] - height in (8, 16, 32)
        assert choice.chosen_ms <= choice.plain_ms * 1e9
    for conv in convs:
        assert len(conv.compute_sizes) == 1
    stage_sizes = {tuple(sorted(conv.compute_sizes.items())) for conv in convs}
    assert len(stage_sizes) == len(choices)  # convs that saw the same input share one choice
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)

    # No time passes a gain threshold of 0: nothing is padded, and the earlier choices are removed.
    choices = tune_depthwise_padding(model, lambda: model.forward_features(x), repeats=1, min_gain=0.0)
    assert all(choice.compute_size is None and choice.chosen_ms == choice.plain_ms for choice in choices)
    assert all(conv.compute_sizes == {} for conv in convs)


def test_tuning_a_second_shape_keeps_the_first_shapes_choice():
    model = load_peaknet(UPSTREAM / "peaknet_tiny.yaml")
    tune_depthwise_padding(model, lambda: model.forward_features(torch.randn(1, 1, 64, 64)), repeats=1, min_gain=1e9)
    first = [dict(conv.compute_sizes) for conv in depthwise_convs(model)]
    tune_depthwise_padding(model, lambda: model.forward_features(torch.randn(1, 1, 96, 128)), repeats=1, min_gain=1e9)
    for conv, earlier in zip(depthwise_convs(model), first):
        assert earlier.items() <= conv.compute_sizes.items()
        assert len(conv.compute_sizes) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float32])
def test_on_a_gpu_the_choice_is_never_slower_and_gives_the_same_values(input_dtype):
    """8 x 192 x 240^2 channels_last in bf16: the ConvNeXt's second stage at 1920^2. A float32
    input runs under autocast (as LayerNorm's output reaches the conv in the served autocast mode)."""
    conv = PaddableDepthwiseConv2d(192, kernel_size=7).to("cuda", torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.randn(8, 192, 240, 240, device="cuda", dtype=input_dtype).contiguous(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True

    def run() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=input_dtype != torch.bfloat16):
            return conv(x).float()

    with torch.inference_mode():
        plain = run()
        (choice,) = tune_depthwise_padding(conv, run)
        assert choice.dtype == torch.bfloat16 and choice.chosen_ms <= choice.plain_ms
        torch.testing.assert_close(run(), plain, rtol=2e-2, atol=0.25)


def test_tuner_times_the_conv_in_autocasts_dtype():
    """Under autocast a float32 input is convolved in the autocast dtype; the tuner times it so."""
    conv = PaddableDepthwiseConv2d(8, kernel_size=7)
    x = torch.randn(2, 8, 16, 16)

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x)

    (choice,) = tune_depthwise_padding(conv, run, repeats=1, min_gain=1e9)
    assert choice.dtype == torch.bfloat16 and choice.compute_size is not None
