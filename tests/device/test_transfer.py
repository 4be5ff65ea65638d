"""Host-to-device transfer keeps the wire dtype and never copies a single request on the CPU."""

import numpy as np
import pytest
import torch

from peaknet_serve.device.transfer import PanelSource, as_tensor, upload_panels


def test_single_request_on_cpu_is_zero_copy():
    body = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).tobytes()
    frames = np.frombuffer(body, dtype=np.uint16).reshape(2, 3, 4, 5)  # read-only view of bytes
    panels = upload_panels([frames], torch.device("cpu"))
    assert panels.shape == (6, 4, 5) and panels.dtype == torch.uint16
    assert panels.data_ptr() == frames.__array_interface__["data"][0]


def test_several_requests_are_stacked_in_order():
    a = np.zeros((1, 2, 4, 5), dtype=np.float32)
    b = np.ones((2, 1, 4, 5), dtype=np.float32)
    panels = upload_panels([a, b], torch.device("cpu"))
    assert panels.shape == (4, 4, 5)
    assert panels[:2].eq(0).all() and panels[2:].eq(1).all()


def test_as_tensor_keeps_dtype():
    for dtype in (np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.float16, np.float32, np.float64):
        assert as_tensor(np.zeros(3, dtype=dtype)).numpy().dtype == dtype


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_upload_through_pinned_memory_keeps_wire_dtype():
    frames = np.random.default_rng(0).integers(0, 65535, (2, 16, 32, 32), dtype=np.uint16)
    panels = upload_panels([frames, frames], torch.device("cuda"))
    assert panels.dtype == torch.uint16 and panels.device.type == "cuda"
    assert np.array_equal(panels.cpu().numpy(), np.concatenate([frames, frames]).reshape(-1, 32, 32))


def test_panel_source_ranges_cross_request_boundaries():
    a = np.arange(1 * 3 * 2 * 2, dtype=np.uint16).reshape(1, 3, 2, 2)
    b = 100 + np.arange(2 * 2 * 2 * 2, dtype=np.uint16).reshape(2, 2, 2, 2)
    source = PanelSource([a, b])
    whole = np.concatenate([a.reshape(-1, 2, 2), b.reshape(-1, 2, 2)])
    assert len(source) == 7
    for start, stop in [(0, 7), (0, 3), (2, 5), (3, 7), (6, 7)]:
        panels, copied = source.upload(start, stop, torch.device("cpu"))
        assert copied is None and np.array_equal(panels.numpy(), whole[start:stop])
    assert [p.shape[0] for p in source.pieces(2, 6)] == [1, 3]
    inside, _ = source.upload(3, 5, torch.device("cpu"))  # within one request: no copy
    assert inside.data_ptr() == b.__array_interface__["data"][0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_panel_source_copies_on_a_side_stream_and_signals_the_end():
    frames = np.random.default_rng(1).integers(0, 65535, (3, 16, 64, 64), dtype=np.uint16)
    side = torch.cuda.Stream()
    panels, copied = PanelSource([frames]).upload(8, 40, torch.device("cuda"), side)
    torch.cuda.current_stream().wait_event(copied)
    assert panels.dtype == torch.uint16
    assert np.array_equal(panels.cpu().numpy(), frames.reshape(-1, 64, 64)[8:40])
