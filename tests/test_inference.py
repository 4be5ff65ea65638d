"""PanelPeakFinder: micro-batching, bucket padding, OOM splitting, agreement with the plain model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from handler.checkpoint import load_peaknet
from handler.inference import InsufficientMemory, PanelPeakFinder
from handler.postprocess import find_peaks, peak_mask
from handler.preprocess import normalize_images, pad_to_multiple

FIXTURE = Path(__file__).parent / "fixtures" / "upstream" / "peaknet_tiny.yaml"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return load_peaknet(FIXTURE)


@pytest.fixture(scope="module")
def panels() -> torch.Tensor:
    rng = np.random.default_rng(3)
    return torch.from_numpy(rng.poisson(30, size=(5, 60, 90)).astype(np.uint16))


def as_rows(table):
    host = table.to_host()
    return list(zip(host.image_index.tolist(), np.round(host.ss, 6).tolist(), np.round(host.fs, 6).tolist()))


def test_matches_full_logits_path(model, panels):
    """Class-difference head + micro-batches == argmax of full logits on padded, normalised input."""
    image = panels.float()
    x = pad_to_multiple(normalize_images(image)).unsqueeze(1)
    with torch.inference_mode():
        logits = model(x)[:, :, :60, :90]
    reference = find_peaks(peak_mask(logits), image)
    finder = PanelPeakFinder(model, dtype=torch.float32, device=CPU, max_batch_panels=2)
    assert as_rows(finder.find(panels).table) == as_rows(reference)
    assert len(reference) > 0


def test_micro_batch_size_and_buckets_do_not_change_results(model, panels):
    whole = PanelPeakFinder(model, dtype=torch.float32, device=CPU, max_batch_panels=64).find(panels)
    bucketed = PanelPeakFinder(model, dtype=torch.float32, device=CPU, max_batch_panels=4,
                               buckets=(4,)).find(panels)   # 5 panels -> 4 + (1 padded to 4)
    assert as_rows(whole.table) == as_rows(bucketed.table)


def test_nonfinite_pixels_are_zeroed_and_counted(model):
    panels = torch.full((2, 64, 96), 10.0)
    panels[0, 3, 4] = float("nan")
    panels[1, 5, 6] = float("inf")
    result = PanelPeakFinder(model, dtype=torch.float32, device=CPU).find(panels)
    assert int(result.nonfinite) == 2
    assert torch.isfinite(result.table.intensity).all()


def test_out_of_memory_splits_the_micro_batch(model, panels):
    """A device that only fits 2 panels at once: the finder halves until it fits, same peaks."""
    calls = []

    def forward_fitting_two(x):
        calls.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated device limit of 2 panels)")
        return model.forward_peak_score(x)

    limited = PanelPeakFinder(model, dtype=torch.float32, device=CPU, max_batch_panels=8,
                              forward=forward_fitting_two).find(panels)
    plain = PanelPeakFinder(model, dtype=torch.float32, device=CPU).find(panels)
    assert as_rows(limited.table) == as_rows(plain.table)
    assert calls[0] == 5 and max(c for c in calls[1:]) <= 3


def test_single_panel_that_does_not_fit_raises_insufficient_memory(model, panels):
    def never_fits(x):
        raise torch.OutOfMemoryError("CUDA out of memory")

    finder = PanelPeakFinder(model, dtype=torch.float32, device=CPU, forward=never_fits)
    with pytest.raises(InsufficientMemory):
        finder.find(panels[:2])


def test_rejects_wrong_rank(model):
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        PanelPeakFinder(model, dtype=torch.float32, device=CPU).find(torch.zeros(1, 1, 64, 96))
