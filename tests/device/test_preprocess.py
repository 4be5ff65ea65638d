"""On-device preparation: sanitise, instance norm (as the public PeakNet), padding, cast."""

import torch

from peaknet_serve.device.preprocess import normalize_images, pad_to_multiple, padded_size, prepare_panels, sanitize


def test_sanitize_zeroes_and_counts_nonfinite():
    x = torch.tensor([[1.0, float("nan")], [float("inf"), -float("inf")]])
    clean, count = sanitize(x)
    assert clean.tolist() == [[1.0, 0.0], [0.0, 0.0]] and int(count) == 3


def test_sanitize_integer_input_becomes_float32_without_counting():
    clean, count = sanitize(torch.tensor([[65535, 0]], dtype=torch.uint16))
    assert clean.dtype == torch.float32 and clean.tolist() == [[65535.0, 0.0]] and int(count) == 0


def test_instance_norm_matches_public_formula():
    x = torch.rand(3, 1, 10, 12) * 1000
    mean = x.mean(dim=(-1, -2, -3), keepdim=True)
    var = x.var(dim=(-1, -2, -3), keepdim=True, correction=0)
    torch.testing.assert_close(normalize_images(x), (x - mean) / torch.sqrt(var + 1e-6))
    out = normalize_images(x[:, 0])
    torch.testing.assert_close(out.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5, rtol=0)


def test_padding_to_multiple_of_32():
    assert [padded_size(s) for s in (1, 32, 33, 64, 352, 385)] == [64, 64, 64, 64, 352, 416]
    x = torch.ones(2, 70, 100)
    padded = pad_to_multiple(x)
    assert padded.shape == (2, 96, 128)
    assert padded[:, :70, :100].eq(1).all() and padded[:, 70:].eq(0).all() and padded[:, :, 100:].eq(0).all()
    assert pad_to_multiple(torch.ones(1, 64, 96)).shape == (1, 64, 96)


def test_prepare_panels_shape_and_dtype():
    raw = torch.randint(0, 60000, (4, 50, 60), dtype=torch.int32).to(torch.uint16)
    x, nonfinite = prepare_panels(raw, torch.bfloat16)
    assert x.shape == (4, 1, 64, 64) and x.dtype == torch.bfloat16 and int(nonfinite) == 0
