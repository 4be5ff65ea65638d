"""Batched inference: raw panels on the device in, a table of peaks out.

:class:`PanelPeakFinder` owns the network and everything between the uploaded wire-dtype panels
and the peak table: sanitising and normalising on the device, micro-batching, autocast, the
class-difference ("peak score") head, the peak mask and connected components. It never moves
pixel data to the host; only the (small) peak table leaves the device, once per batch.

:meth:`PanelPeakFinder.find_pipelined` takes host panels instead and uploads them one
micro-batch at a time on a side stream, the next copy overlapping the current compute.

A bad-pixel mask (``good_pixels``, (P, H, W) bool, True = good, as psana and CXI files mark
pixels) keeps its bad pixels out of the peaks: the network reads the frame as it is (as it was
trained, hot pixels and all), and a bad pixel counts in no peak's pixels, sums, local background
or position; a peak made of bad pixels only (a hot pixel the mask knows) is dropped
(:func:`~peaknet_serve.device.peaks.find_peaks`). Panel ``i`` of a batch uses
``good_pixels[i % P]`` (batches are frame-major).

Out-of-memory on the GPU splits the micro-batch in halves and retries; a single panel that
still does not fit raises :class:`InsufficientMemory` (answered 503 ``insufficient_memory`` by the handler).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch
from torch import nn

from peaknet_serve.device.peaks import (
    UNBOUNDED,
    LabelLimits,
    PeakTable,
    bounded_components,
    find_peaks,
    peak_mask_from_score,
)
from peaknet_serve.device.preprocess import network_input, sanitize
from peaknet_serve.device.transfer import PanelSource
from peaknet_serve.model.depthwise import PaddingChoice, tune_depthwise_padding

log = logging.getLogger(__name__)


class InsufficientMemory(RuntimeError):
    """A single panel does not fit on the device."""


@dataclass
class BatchPeaks:
    """Result of :meth:`PanelPeakFinder.find`.

    Attributes:
        table: peaks of all panels; ``image_index`` indexes the input panels (B).
        nonfinite: 0-d int64 device tensor, NaN/inf pixels that were set to 0.
        capped: bool (B,) device tensor, panels whose labelling ``label_limits`` cut short: they
            report no peaks.
    """

    table: PeakTable
    nonfinite: torch.Tensor
    capped: torch.Tensor


def concat_tables(tables: list[PeakTable], offsets: list[int]) -> PeakTable:
    """Concatenate peak tables of consecutive micro-batches.

    Args:
        tables: one table per micro-batch, ``image_index`` local to it.
        offsets: index of each micro-batch's first panel in the whole batch.
    """
    if len(tables) == 1 and offsets[0] == 0:
        return tables[0]
    columns = {}
    for f in fields(PeakTable):
        parts = [getattr(t, f.name) for t in tables]
        if f.name == "image_index":
            parts = [p + off for p, off in zip(parts, offsets)]
        columns[f.name] = torch.cat(parts)
    return PeakTable(**columns)


def check_good_pixels(good_pixels: torch.Tensor | None, batch_shape: tuple[int, ...]) -> None:
    """Raise ValueError unless ``good_pixels`` (bool (P, H, W), or None) fits (B, H, W) panels: the
    same (H, W) and B a multiple of P."""
    if good_pixels is None:
        return
    if good_pixels.dtype != torch.bool or good_pixels.dim() != 3:
        raise ValueError(f"good_pixels must be bool (P, H, W), got {good_pixels.dtype} {tuple(good_pixels.shape)}")
    count, *panel = batch_shape
    if tuple(panel) != tuple(good_pixels.shape[1:]) or count % good_pixels.shape[0]:
        raise ValueError(
            f"a {tuple(good_pixels.shape)} bad-pixel mask does not fit {tuple(batch_shape)} panels"
            " (same panel size, a whole number of frames)"
        )


def _good_rows(good_pixels: torch.Tensor | None, start: int, count: int) -> torch.Tensor | None:
    """(count, H, W) bool: the good pixels of panels ``start .. start + count - 1`` of a batch."""
    if good_pixels is None:
        return None
    rows = torch.arange(start, start + count, device=good_pixels.device) % good_pixels.shape[0]
    return good_pixels.index_select(0, rows)


class PanelPeakFinder:
    """Runs PeakNet over panels and extracts peaks.

    Args:
        model: eval-mode PeakNet with ``forward_peak_score`` (B, 1, H, W) -> (B, 1, H, W),
            weights already in ``dtype`` on ``device``.
        dtype: compute dtype (float32, bfloat16, float16).
        device: the model's device.
        max_batch_panels: largest micro-batch.
        threshold: ``None`` for argmax, else P(peak) >= threshold.
        min_peak_pixels: smallest connected component reported.
        max_peaks_per_image: cap per panel (largest components kept), ``None`` = no cap.
        label_limits: bounds on the connected-component labelling
            (:class:`~peaknet_serve.device.peaks.LabelLimits`); capped panels report no peaks.
        buckets: micro-batch sizes a compiled network was built for; a micro-batch is padded with
            empty panels up to the next bucket so that shapes stay static. Empty = no padding.
        autocast: on CUDA with a reduced-precision ``dtype``, run the network under
            ``torch.autocast``. Off, every op runs in the weights' dtype: CUDA autocast computes
            layer_norm and group_norm in float32 and returns float32, so the BiFPN's residual stream
            and the head's pyramid stay float32 (twice the memory) although the weights are bf16.
        blocking_wait: on CUDA, wait for each micro-batch's network on a blocking event (the
            thread sleeps until the GPU signals) before the peak extraction reads its first result
            on the host; False: that read polls the GPU with a busy core (CUDA's default).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        dtype: torch.dtype,
        device: torch.device,
        max_batch_panels: int = 64,
        threshold: float | None = None,
        min_peak_pixels: int = 1,
        max_peaks_per_image: int | None = None,
        buckets: tuple[int, ...] = (),
        channels_last: bool = False,
        autocast: bool = True,
        forward=None,
        label_limits: LabelLimits = UNBOUNDED,
        blocking_wait: bool = False,
    ) -> None:
        self.model = model
        self.dtype = dtype
        self.device = device
        self.max_batch_panels = max_batch_panels
        self.threshold = threshold
        self.min_peak_pixels = min_peak_pixels
        self.max_peaks_per_image = max_peaks_per_image
        self.label_limits = label_limits
        self.buckets = tuple(sorted(buckets))
        self.channels_last = channels_last
        self.autocast = autocast
        self._forward = forward if forward is not None else model.forward_peak_score
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.blocking_wait = blocking_wait and device.type == "cuda"

    # -- public ---------------------------------------------------------------------------
    def with_threshold(self, threshold: float | None) -> PanelPeakFinder:
        """This finder with another peak threshold (None: this one's), sharing model and streams."""
        if threshold is None or threshold == self.threshold:
            return self
        other = copy.copy(self)
        other.threshold = threshold
        return other

    @torch.inference_mode()
    def find(self, panels: torch.Tensor, good_pixels: torch.Tensor | None = None) -> BatchPeaks:
        """Find peaks in ``panels``.

        Args:
            panels: (B, H, W) in the wire dtype (uint16, float32, ...) on ``self.device``.
            good_pixels: bool (P, H, W) on ``self.device``, True = good pixel, B a multiple of P:
                panel ``i`` uses ``good_pixels[i % P]`` (see the module docstring); None: every
                pixel is good.

        Returns:
            :class:`BatchPeaks` with peaks of all B panels (device tensors).
        """
        if panels.dim() != 3:
            raise ValueError(f"panels must be (B, H, W), got {tuple(panels.shape)}")
        check_good_pixels(good_pixels, panels.shape)
        return self._collect(
            ((start, chunk, None) for start, chunk in self._chunks(panels, self.max_batch_panels)), good_pixels
        )

    @torch.inference_mode()
    def find_pipelined(self, source: PanelSource, good_pixels: torch.Tensor | None = None) -> BatchPeaks:
        """:meth:`find` on host panels, uploaded micro-batch by micro-batch.

        Right after the network of micro-batch ``i`` is launched (asynchronously), micro-batch
        ``i + 1`` is staged in pinned memory and copied on a side stream, so the host copy and
        the DMA overlap the device's compute and the peak extraction's syncs. Same results as
        ``find(upload_panels(...))``.

        Args:
            source: (B, H, W) host panels in the wire dtype.
            good_pixels: as for :meth:`find`.
        """
        total = len(source)
        if total == 0:
            raise ValueError("no panels to run")
        check_good_pixels(good_pixels, (total, *source.panel_shape))
        bounds = [(s, min(s + self.max_batch_panels, total)) for s in range(0, total, self.max_batch_panels)]
        return self._collect(self._uploaded_chunks(source, bounds), good_pixels)

    def _uploaded_chunks(
        self, source: PanelSource, bounds: list[tuple[int, int]]
    ) -> Iterator[tuple[int, torch.Tensor, Callable[[], None]]]:
        """``(start, chunk on the device, prefetch)`` per range; ``prefetch`` uploads the next range
        (called once the chunk's network is launched), which the next step then waits for."""
        arrived = [source.upload(*bounds[0], self.device, self._copy_stream)]
        for index, (start, _) in enumerate(bounds):
            chunk = self._on_compute_stream(*arrived.pop())
            following = bounds[index + 1] if index + 1 < len(bounds) else None

            def prefetch(following=following) -> None:
                if following is not None:
                    arrived.append(source.upload(*following, self.device, self._copy_stream))

            yield start, chunk, _once(prefetch)

    def _collect(self, chunks, good_pixels: torch.Tensor | None) -> BatchPeaks:
        """Run ``(start, chunk, after_launch)`` micro-batches (split on out-of-memory) into one result."""
        tables, offsets, nonfinite, capped = [], [], [], []
        for start, chunk, after_launch in chunks:
            good = _good_rows(good_pixels, start, chunk.shape[0])
            for sub_start, table, nf, cap in self._run_with_oom_split(chunk, good, after_launch):
                tables.append(table)
                offsets.append(start + sub_start)
                nonfinite.append(nf)
                capped.append(cap)  # micro-batches arrive in panel order
        return BatchPeaks(concat_tables(tables, offsets), torch.stack(nonfinite).sum(), torch.cat(capped))

    def warmup_sizes(self, panels: int) -> tuple[int, ...]:
        """The micro-batch sizes a warm-up for ``panels`` panels runs: every bucket, or without
        buckets the one micro-batch that ``panels`` fill."""
        return self.buckets or (min(panels, self.max_batch_panels),)

    def network_example(self, size: int, height: int, width: int) -> torch.Tensor:
        """Zero panels as the network sees them: (size, 1, Hp, Wp) in ``dtype`` and the served memory
        format, Hp and Wp the (H, W) padded to the network's multiple."""
        image = torch.zeros((size, height, width), dtype=torch.float32, device=self.device)
        x = network_input(image, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @property
    def forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """What runs the network: (b, 1, Hp, Wp) -> (b, 1, Hp, Wp) score."""
        return self._forward

    def set_forward(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Run the network through ``forward`` from now on: (b, 1, Hp, Wp) -> (b, 1, Hp, Wp) score,
        called under the finder's autocast."""
        self._forward = forward

    def warmup(self, panels: int, height: int, width: int, dtype: torch.dtype = torch.uint16) -> None:
        """Run every micro-batch bucket once for (H, W) so that no request pays for compilation."""
        for size in self.warmup_sizes(panels):
            dummy = torch.zeros((size, height, width), dtype=dtype, device=self.device)
            self.find(dummy)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def tune_depthwise(self, panels: int, height: int, width: int) -> list[PaddingChoice]:
        """:func:`~peaknet_serve.model.depthwise.tune_depthwise_padding` for (H, W) panels, eagerly, at the
        largest micro-batch (bucket) that ``panels`` panels fill, in the served dtype, memory
        format and autocast. Call before the compiled network's first run."""
        x = self.network_example(self._bucket(min(panels, self.max_batch_panels)), height, width)

        def run() -> None:
            with self._autocast():
                self.model.forward_features(x)

        return tune_depthwise_padding(self.model, run)

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _chunks(panels: torch.Tensor, size: int) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, panels.shape[0], size):
            yield start, panels[start : start + size]

    def _on_compute_stream(self, panels: torch.Tensor, copied: torch.cuda.Event | None) -> torch.Tensor:
        """Make the current stream wait for a side-stream copy and own its memory from now on."""
        if copied is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(copied)
            panels.record_stream(current)
        return panels

    def _run_with_oom_split(
        self, chunk: torch.Tensor, good: torch.Tensor | None, after_launch: Callable[[], None] | None = None
    ) -> Iterator[tuple[int, PeakTable, torch.Tensor, torch.Tensor]]:
        try:
            yield 0, *self._run(chunk, good, after_launch)
            return
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if chunk.shape[0] == 1:
                raise InsufficientMemory(f"one {tuple(chunk.shape[1:])} panel does not fit in device memory") from None
        half = (chunk.shape[0] + 1) // 2
        log.warning("out of memory at %d panels; retrying as micro-batches of %d", chunk.shape[0], half)
        for start, sub in self._chunks(chunk, half):
            sub_good = None if good is None else good[start : start + sub.shape[0]]
            for sub_start, *result in self._run_with_oom_split(sub, sub_good, after_launch):
                yield start + sub_start, *result

    def _run(
        self, chunk: torch.Tensor, good: torch.Tensor | None, after_launch: Callable[[], None] | None = None
    ) -> tuple[PeakTable, torch.Tensor, torch.Tensor]:
        """One micro-batch: (b, H, W) wire-dtype panels and their (b, H, W) bool good pixels (or None)."""
        image, nonfinite = sanitize(chunk)  # (b, H, W) float32
        score = self._score(image)  # (b, H, W) float, launched
        if after_launch is not None:
            after_launch()  # host work while the device computes
        if self.blocking_wait:
            self._sleep_until_done()
        mask = peak_mask_from_score(score, self.threshold)  # (b, H, W) bool
        components = bounded_components(mask, self.label_limits)
        table = find_peaks(
            mask,
            image,
            min_pixels=self.min_peak_pixels,
            max_peaks_per_image=self.max_peaks_per_image,
            valid=good,
            components=components,
        )
        return table, nonfinite, components.capped

    def _sleep_until_done(self) -> None:
        """Block (not poll) until everything launched on the current stream has run."""
        done = torch.cuda.Event(blocking=True)
        done.record(torch.cuda.current_stream(self.device))
        done.synchronize()

    def _score(self, image: torch.Tensor) -> torch.Tensor:
        """(b, H, W) float32 sanitised ADU -> (b, H, W) class-difference logits."""
        b, h, w = image.shape
        x = network_input(image, self.dtype)
        bucket = self._bucket(b)
        if bucket > b:
            x = torch.cat([x, x.new_zeros((bucket - b, *x.shape[1:]))])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            score = self._forward(x)  # (bucket, 1, Hp, Wp)
        return score[:b, 0, :h, :w]

    def _bucket(self, size: int) -> int:
        for bucket in self.buckets:
            if bucket >= size:
                return bucket
        return size

    def _autocast(self):
        if self.autocast and self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()


def _once(action: Callable[[], None]) -> Callable[[], None]:
    """``action`` that runs on the first call only (an out-of-memory retry calls it again)."""
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return run
