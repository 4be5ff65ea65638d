"""Measuring and capping CUDA memory in the GPU tests (real out-of-memory, not a simulated one)."""

import contextlib

import torch

from peaknet_serve.device.finder import PanelPeakFinder


def peak_bytes(finder: PanelPeakFinder, panels: torch.Tensor) -> int:
    """Device memory that ``finder.find(panels)`` needs beyond what is already allocated."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    finder.find(panels)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


@contextlib.contextmanager
def allocator_cap(extra_bytes: int):
    """Cap this process's CUDA caching allocator at what it holds now plus ``extra_bytes``: beyond
    that, allocations fail with a real ``torch.OutOfMemoryError``."""
    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + extra_bytes) / total, device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
