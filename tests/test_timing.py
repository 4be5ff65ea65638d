"""peaknet_serve.timing: one sample per timed run, after the warm-ups, in milliseconds."""

from __future__ import annotations

import time

import pytest
import torch

from peaknet_serve.timing import time_samples_ms


def test_cpu_samples_are_wall_clock_ms_after_the_warmups():
    calls = []

    def work() -> None:
        calls.append(None)
        time.sleep(0.02)

    samples = time_samples_ms(work, torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and len(samples) == 3
    assert all(20.0 <= ms < 1000.0 for ms in samples)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_samples_time_the_launched_work():
    device = torch.device("cuda")
    a = torch.randn(4096, 4096, device=device)
    small = time_samples_ms(lambda: a[:64, :64] @ a[:64, :64], device, warmup=1, repeats=3)
    large = time_samples_ms(lambda: a @ a @ a @ a, device, warmup=1, repeats=3)
    assert min(large) > max(small)
