"""PanelPeakFinder: micro-batching, bucket padding, OOM splitting, agreement with the plain model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.device.finder import InsufficientMemory, PanelPeakFinder
from peaknet_serve.device.peaks import LabelLimits, find_peaks, peak_mask
from peaknet_serve.device.preprocess import normalize_images, pad_to_multiple
from peaknet_serve.device.transfer import PanelSource, upload_panels
from peaknet_serve.sim.peaksim.matching import peak_list_agreement
from tests.frames import spot_frames
from tests.gpu_memory import allocator_cap, peak_bytes

FIXTURE = Path(__file__).parents[1] / "fixtures" / "upstream" / "peaknet_tiny.yaml"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return load_peaknet(FIXTURE)


@pytest.fixture(scope="module")
def panels() -> torch.Tensor:
    rng = np.random.default_rng(3)
    return torch.from_numpy(rng.poisson(30, size=(5, 60, 90)).astype(np.uint16))


def peak_array(table) -> np.ndarray:
    """(N, 3) float64 (image, ss, fs) of a peak table, for :func:`peak_list_agreement`."""
    host = table.to_host()
    return np.stack([host.image_index, host.ss, host.fs], axis=1).astype(np.float64)


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
    bucketed = PanelPeakFinder(model, dtype=torch.float32, device=CPU, max_batch_panels=4, buckets=(4,)).find(
        panels
    )  # 5 panels -> 4 + (1 padded to 4)
    assert as_rows(whole.table) == as_rows(bucketed.table)


def test_depthwise_tuning_runs_the_served_batch_and_keeps_the_peaks(panels):
    """The tuner sees the bucketed micro-batch at the padded network size; the peaks stay the same."""
    from peaknet_serve.model.depthwise import PaddableDepthwiseConv2d

    model = load_peaknet(FIXTURE)
    finder = PanelPeakFinder(model, dtype=torch.float32, device=CPU, max_batch_panels=4, buckets=(2, 4))
    before = as_rows(finder.find(panels).table)
    choices = finder.tune_depthwise(3, 60, 90)  # 3 panels -> bucket 4; 60x90 -> 64x96
    convs = [m for m in model.modules() if isinstance(m, PaddableDepthwiseConv2d)]
    assert sum(choice.modules for choice in choices) == len(convs)
    assert choices[0].input_shape[0] == 4 and choices[0].input_shape[-2:] == (16, 24)
    assert as_rows(finder.find(panels).table) == before


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

    limited = PanelPeakFinder(
        model, dtype=torch.float32, device=CPU, max_batch_panels=8, forward=forward_fitting_two
    ).find(panels)
    plain = PanelPeakFinder(model, dtype=torch.float32, device=CPU).find(panels)
    assert as_rows(limited.table) == as_rows(plain.table)
    assert calls[0] == 5 and max(c for c in calls[1:]) <= 3


def test_single_panel_that_does_not_fit_raises_insufficient_memory(model, panels):
    def never_fits(x):
        raise torch.OutOfMemoryError("CUDA out of memory")

    finder = PanelPeakFinder(model, dtype=torch.float32, device=CPU, forward=never_fits)
    with pytest.raises(InsufficientMemory):
        finder.find(panels[:2])


def counting(source: PanelSource) -> list[tuple[int, int]]:
    """Record every range ``source`` uploads."""
    calls, upload = [], source.upload

    def recorded(start, stop, *args, **kwargs):
        calls.append((start, stop))
        return upload(start, stop, *args, **kwargs)

    source.upload = recorded
    return calls


def test_pipelined_upload_gives_the_same_peaks(model, panels):
    """Two requests (3 + 2 panels) in micro-batches of 2: ranges cross the request boundary."""
    requests_ = [panels[:3].numpy()[None], panels[3:].numpy()[None]]
    finder = PanelPeakFinder(model, dtype=torch.float32, device=CPU, max_batch_panels=2)
    source = PanelSource(requests_)
    uploads = counting(source)
    pipelined = finder.find_pipelined(source)
    plain = finder.find(upload_panels(requests_, CPU))
    assert as_rows(pipelined.table) == as_rows(plain.table) and len(plain.table) > 0
    assert uploads == [(0, 2), (2, 4), (4, 5)]


def test_pipelined_upload_survives_out_of_memory_splits(model, panels):
    def forward_fitting_one(x):
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return model.forward_peak_score(x)

    source = PanelSource([panels.numpy()[None]])
    uploads = counting(source)
    limited = PanelPeakFinder(
        model, dtype=torch.float32, device=CPU, max_batch_panels=4, forward=forward_fitting_one
    ).find_pipelined(source)
    plain = PanelPeakFinder(model, dtype=torch.float32, device=CPU).find(panels)
    assert as_rows(limited.table) == as_rows(plain.table)
    assert uploads == [(0, 4), (4, 5)]  # each range uploaded exactly once


def test_capped_panels_are_reported_in_panel_order_across_micro_batches(model, panels):
    """The fixture's random weights mark about half of every panel: with a cap between the panels'
    fractions the dense ones are capped, the rest answer exactly as without limits, also when the
    batch is split in micro-batches and by an out-of-memory retry."""
    with torch.inference_mode():
        score = model.forward_peak_score(pad_to_multiple(normalize_images(panels.float())).unsqueeze(1))
    fractions = (score[:, 0, :60, :90] > 0).float().mean(dim=(1, 2))
    cap = float(fractions.median())
    limits = LabelLimits(max_panel_fraction=cap, max_iterations=None)
    expected = (fractions > cap).tolist()
    assert any(expected) and not all(expected)
    plain = PanelPeakFinder(model, dtype=torch.float32, device=CPU).find(panels)

    def forward_fitting_two(x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated device limit of 2 panels)")
        return model.forward_peak_score(x)

    for finder in (
        PanelPeakFinder(model, dtype=torch.float32, device=CPU, max_batch_panels=2, label_limits=limits),
        PanelPeakFinder(
            model, dtype=torch.float32, device=CPU, max_batch_panels=8, label_limits=limits, forward=forward_fitting_two
        ),
    ):
        result = finder.find(panels)
        assert result.capped.tolist() == expected
        kept = [row for row in as_rows(plain.table) if not expected[row[0]]]
        assert as_rows(result.table) == kept
    assert not plain.capped.any()


# -- bad-pixel masks ----------------------------------------------------------------------------
def good_pixels_of(frames: int, panels_per_frame: int, seed: int = 7) -> torch.Tensor:
    """(P, 60, 90) bool with ~20% bad pixels in blocks and lines (as dead columns and hot pixels)."""
    rng = np.random.default_rng(seed)
    good = rng.random((panels_per_frame, 60, 90)) > 0.2
    good[:, :, 40] = False
    return torch.from_numpy(good)


def test_bad_pixels_are_left_out_of_the_peaks_across_micro_batches(model, panels):
    """With a (P, H, W) mask, panel i of a frame-major batch is scored as it is and its peaks are
    extracted with ``good_pixels[i % P]`` as the good pixels (:func:`find_peaks`' ``valid``): the
    same table as that computation done by hand, for any micro-batch size."""
    good = good_pixels_of(1, 1)[0]
    mask_of = torch.stack([good, ~good.roll(1, 0), good.flip(1), good, good.roll(3, 1)])  # P = 5
    batch = torch.cat([panels, torch.from_numpy(panels.numpy()[:, :, ::-1].copy())])  # two frames of five
    rows = mask_of.repeat(2, 1, 1)
    image = batch.float()
    x = pad_to_multiple(normalize_images(image)).unsqueeze(1)
    with torch.inference_mode():
        logits = model(x)[:, :, :60, :90]
    reference = find_peaks(peak_mask(logits), image, valid=rows)
    for size in (2, 3, 10):
        finder = PanelPeakFinder(model, dtype=torch.float32, device=CPU, max_batch_panels=size)
        assert as_rows(finder.find(batch, good_pixels=mask_of).table) == as_rows(reference)
    assert len(reference) > 0
    unmasked = PanelPeakFinder(model, dtype=torch.float32, device=CPU).find(batch)
    assert as_rows(unmasked.table) != as_rows(reference)


def test_bad_pixel_mask_survives_out_of_memory_splits_and_pipelined_uploads(model, panels):
    mask_of = good_pixels_of(1, 5)

    def forward_fitting_two(x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated device limit of 2 panels)")
        return model.forward_peak_score(x)

    plain = PanelPeakFinder(model, dtype=torch.float32, device=CPU).find(panels, good_pixels=mask_of)
    limited = PanelPeakFinder(
        model, dtype=torch.float32, device=CPU, max_batch_panels=8, forward=forward_fitting_two
    ).find(panels, good_pixels=mask_of)
    pipelined = PanelPeakFinder(model, dtype=torch.float32, device=CPU, max_batch_panels=2).find_pipelined(
        PanelSource([panels.numpy()[None]]), good_pixels=mask_of
    )
    assert as_rows(limited.table) == as_rows(plain.table) == as_rows(pipelined.table)
    assert len(plain.table) > 0


@pytest.mark.parametrize(
    ("good", "match"),
    [
        (torch.ones(5, 60, 90, dtype=torch.uint8), "bool"),
        (torch.ones(60, 90, dtype=torch.bool), "bool"),
        (torch.ones(2, 60, 90, dtype=torch.bool), "whole number of frames"),
        (torch.ones(5, 60, 91, dtype=torch.bool), "same panel size"),
    ],
)
def test_a_mask_that_does_not_fit_the_panels_is_refused(model, panels, good, match):
    with pytest.raises(ValueError, match=match):
        PanelPeakFinder(model, dtype=torch.float32, device=CPU).find(panels, good_pixels=good)


def test_rejects_wrong_rank(model):
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        PanelPeakFinder(model, dtype=torch.float32, device=CPU).find(torch.zeros(1, 1, 64, 96))


# -- a real CUDA out-of-memory (GPU hosts only) ------------------------------------------------
BUNDLED = Path(__file__).resolve().parents[2] / "model_store" / "peaknet" / "peaknet.yaml"


@pytest.fixture(scope="module")
def gpu_model():
    return load_peaknet(BUNDLED, dtype=torch.bfloat16, device="cuda")


@pytest.fixture(scope="module")
def epix_panels() -> torch.Tensor:
    """(32, 352, 384) uint16 on the GPU: two ePix10k2M frames with 40 Gaussian spots per panel."""
    return torch.from_numpy(spot_frames(2, 16, 352, 384, seed=5, spots=40).reshape(32, 352, 384)).cuda()


def per_panel_bytes(finder: PanelPeakFinder, panels: torch.Tensor) -> tuple[int, int]:
    """``(fixed, per_panel)``: the memory one more panel costs, and what remains at one panel
    (cuDNN workspaces and the like, which cuDNN shrinks by itself when memory runs short)."""
    one, eight = peak_bytes(finder, panels[:1]), peak_bytes(finder, panels[:8])
    per_panel = (eight - one) // 7
    return one - per_panel, per_panel


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpu_out_of_memory_splits_and_keeps_the_peaks(gpu_model, epix_panels, caplog):
    cuda = torch.device("cuda", torch.cuda.current_device())
    finder = PanelPeakFinder(gpu_model, dtype=torch.bfloat16, device=cuda, max_batch_panels=32)
    reference = set(as_rows(finder.find(epix_panels).table))
    _, per_panel = per_panel_bytes(finder, epix_panels)
    assert per_panel > 2**20, per_panel  # activations grow with the batch
    with caplog.at_level("WARNING", logger="peaknet_serve.device.finder"), allocator_cap(4 * per_panel):
        capped = set(as_rows(finder.find(epix_panels).table))  # 32 panels need ~32 x per_panel
    assert "out of memory at 32 panels" in caplog.text
    assert len(reference) > 100
    assert len(capped & reference) / len(capped | reference) >= 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpu_out_of_memory_for_one_panel_raises_insufficient_memory(gpu_model, epix_panels):
    cuda = torch.device("cuda", torch.cuda.current_device())
    finder = PanelPeakFinder(gpu_model, dtype=torch.bfloat16, device=cuda)
    _, per_panel = per_panel_bytes(finder, epix_panels)
    before = as_rows(finder.find(epix_panels[:4]).table)
    huge = torch.zeros((2, 2816, 2816), dtype=torch.uint16, device=cuda)  # 64 ePix panels' pixels each
    with allocator_cap(8 * per_panel), pytest.raises(InsufficientMemory):
        finder.find(huge)
    assert as_rows(finder.find(epix_panels[:4]).table) == before and before  # the same finder works on


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pipelined_upload_on_cuda_gives_the_same_peaks(gpu_model, epix_panels):
    cuda = torch.device("cuda", torch.cuda.current_device())
    host = epix_panels.cpu().numpy()
    finder = PanelPeakFinder(gpu_model, dtype=torch.bfloat16, device=cuda, max_batch_panels=12)
    pipelined = finder.find_pipelined(PanelSource([host[:20][None], host[20:][None]]))
    assert as_rows(pipelined.table) == as_rows(finder.find(epix_panels).table)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pure_bf16_without_autocast_finds_the_same_peaks_in_less_memory(gpu_model, epix_panels):
    """``autocast=False`` keeps every activation in bf16 (CUDA autocast returns float32 from the
    norms); its peaks, like the autocast path's, agree with float32's on >= 99% (within 1 px)."""
    cuda = torch.device("cuda", torch.cuda.current_device())
    float32_model = load_peaknet(BUNDLED, dtype=torch.float32, device="cuda")
    reference = peak_array(PanelPeakFinder(float32_model, dtype=torch.float32, device=cuda).find(epix_panels).table)
    assert len(reference) > 100
    memory = {}
    for autocast in (True, False):
        finder = PanelPeakFinder(gpu_model, dtype=torch.bfloat16, device=cuda, autocast=autocast)
        assert peak_list_agreement(peak_array(finder.find(epix_panels).table), reference) >= 0.99, autocast
        memory[autocast] = peak_bytes(finder, epix_panels)
    assert memory[False] < memory[True]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_blocking_wait_on_cuda_gives_the_same_peaks(gpu_model, epix_panels):
    cuda = torch.device("cuda", torch.cuda.current_device())
    spin = PanelPeakFinder(gpu_model, dtype=torch.bfloat16, device=cuda, max_batch_panels=12)
    block = PanelPeakFinder(gpu_model, dtype=torch.bfloat16, device=cuda, max_batch_panels=12, blocking_wait=True)
    assert block.blocking_wait
    assert as_rows(block.find(epix_panels).table) == as_rows(spin.find(epix_panels).table)
    host = epix_panels.cpu().numpy()
    pipelined = block.find_pipelined(PanelSource([host[:20][None], host[20:][None]]))
    assert as_rows(pipelined.table) == as_rows(spin.find(epix_panels).table)


def test_blocking_wait_is_a_no_op_on_the_cpu(model, panels):
    block = PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"), blocking_wait=True)
    assert not block.blocking_wait
    plain = PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"))
    assert as_rows(block.find(panels).table) == as_rows(plain.find(panels).table)


def test_with_threshold_shares_the_model_and_leaves_the_original():
    model = load_peaknet(FIXTURE)
    finder = PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"), threshold=0.5)
    assert finder.with_threshold(None) is finder and finder.with_threshold(0.5) is finder
    strict = finder.with_threshold(0.95)
    assert strict.threshold == 0.95 and finder.threshold == 0.5 and strict.model is finder.model
    panels = torch.from_numpy(spot_frames(n=1, seed=3).reshape(-1, 64, 96))
    expected = PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"), threshold=0.95).find(panels)
    torch.testing.assert_close(strict.find(panels).table.ss, expected.table.ss)


@pytest.mark.parametrize("shape", [(1, 2, 3), (2, 1, 1), (1, 32, 32), (1, 32, 70)])
def test_tiny_panels_are_answered(shape):
    """Panels of 32 px or less: the head's GroupNorm needs more than one value per channel at
    stride 32, so they are padded to 64; the answer is an empty or real peak table, not an error."""
    model = load_peaknet(FIXTURE, dtype="float32")
    finder = PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"))
    panels = torch.zeros(shape)
    panels[..., 0, 0] = 1000.0
    table = finder.find(panels).table
    assert len(table) <= shape[0] and bool((table.ss < shape[1]).all() and (table.fs < shape[2]).all())
