"""Custom handler metrics, published through TorchServe's metrics API (Prometheus on :8082).

Names (Prometheus adds no prefix; TorchServe adds the ``ModelName`` and ``Level`` labels):

==============================  =========  =================================================
``PeakNetFramesServed``         counter    frames answered with 200
``PeakNetPanelsServed``         counter    panels run through the network
``PeakNetBadRequests``          counter    4xx answers, label ``ErrorType`` (decoder's type)
``PeakNetServerErrors``         counter    5xx answers, label ``ErrorType``
``PeakNetNonFinitePixels``      counter    NaN/inf pixels set to 0 before inference
``PeakNetCappedFrames``         counter    frames with a panel whose labelling was capped (``max_mask_fraction``,
                                           ``max_label_iterations``): answered with ``"capped": true``
``PeakNetCappedPanels``         counter    panels capped so (they report no peaks)
``PeakNetBatchRequests``        gauge      requests in the last TorchServe batch
``PeakNetBatchPanels``          gauge      panels in the last TorchServe batch
``PeakNetPeaksPerFrame``        gauge      mean peaks per frame in the last batch
``PeakNetDecodeMs``             gauge      decode time of the last batch (host)
``PeakNetH2DMs``                gauge      staging + host-to-device copy time (h2d_overlap off only)
``PeakNetInferenceMs``          gauge      network + peak extraction (+ overlapped copies) time
``PeakNetPostprocessMs``        gauge      peak lists to responses (host)
``PeakNetGpuMemoryAllocatedMB`` gauge      torch.cuda.memory_allocated on the worker's GPU
``PeakNetGpuMemoryReservedMB``  gauge      torch.cuda.memory_reserved (cache and graph pools too)
``PeakNetHandleMs``             gauge      the whole batch inside the handler
``PeakNetBatches``              counter    batches handled
``PeakNet<Stage>MsTotal``       counter    sum of each ``...Ms`` timing gauge above: with
                                           ``PeakNetBatches`` gives the mean per batch, and
                                           ``rate()`` the busy fraction
``PeakNetRequestSeconds``       histogram  per request: from the start of its batch in the handler
                                           to its answer; label ``Protocol`` (``native``/``oip``)
``PeakNetStageSeconds``         histogram  per batch and stage; label ``Stage`` (``decode``,
                                           ``h2d``, ``inference``, ``postprocess``, ``handle``)
``PeakNetFramePeaks_bucket``    counter    frames served with at most ``le`` peaks (cumulative,
                                           ``le`` in :data:`PEAK_BUCKETS` and ``+Inf``): a
                                           histogram of peaks per frame for ``histogram_quantile``
``PeakNetPeaksFound``           counter    peaks in all frames served (with ``PeakNetFramesServed``:
                                           the mean per frame)
``PeakNetHitFrames``            counter    frames with at least ``hit_min_peaks`` peaks; label
                                           ``MinPeaks``; over ``PeakNetFramesServed``: hit rate
==============================  =========  =================================================

Histograms take TorchServe's buckets (the Prometheus Java client's defaults, 5 ms to 10 s), so
times are published in seconds. ``histogram_quantile(0.99, sum by (le) (rate(
PeakNetRequestSeconds_bucket[5m])))`` is the p99 handler latency.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

# Upper bounds of the peaks-per-frame buckets (``+Inf`` is added).
PEAK_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

try:  # TorchServe is a run-time dependency of the server, not of the model code
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric_type_enum import MetricTypes
except ImportError:  # pragma: no cover - TorchServe absent: metrics are simply not published
    Dimension = None
    MetricTypes = None


class HandlerMetrics:
    """Thin, failure-proof wrapper around ``context.metrics``: a metrics error never fails a request."""

    def __init__(self, metrics: Any | None, model_name: str) -> None:
        self._metrics = metrics if Dimension is not None else None
        self._model_name = model_name

    def count(self, name: str, value: float, **labels: str) -> None:
        self._emit(name, value, "count", MetricTypes.COUNTER if MetricTypes else None, labels)

    def gauge(self, name: str, value: float, unit: str = "ms", **labels: str) -> None:
        self._emit(name, value, unit, MetricTypes.GAUGE if MetricTypes else None, labels)

    def histogram(self, name: str, seconds: float, **labels: str) -> None:
        """One observation of the histogram ``name``, in seconds."""
        self._emit(name, seconds, "s", MetricTypes.HISTOGRAM if MetricTypes else None, labels)

    def timing(self, name: str, ms: float, stage: str) -> None:
        """A stage time: the gauge ``name`` (last batch), the counter ``name + "Total"`` and an
        observation of ``PeakNetStageSeconds{Stage=stage}``."""
        self.gauge(name, ms)
        self.count(f"{name}Total", ms)
        self.histogram("PeakNetStageSeconds", ms / 1e3, Stage=stage)

    def frame_peaks(self, peaks_per_frame: Iterable[int], hit_min_peaks: int) -> None:
        """The peaks-per-frame histogram, the peak total and the hit counter for frames just served."""
        counts = list(peaks_per_frame)
        for bound, frames in peak_buckets(counts):
            self.count("PeakNetFramePeaks_bucket", frames, le=bound)
        self.count("PeakNetPeaksFound", sum(counts))
        self.count("PeakNetHitFrames", sum(c >= hit_min_peaks for c in counts), MinPeaks=str(hit_min_peaks))

    def _emit(self, name: str, value: float, unit: str, kind: Any, labels: dict[str, str]) -> None:
        if self._metrics is None:
            return
        try:
            dims = [Dimension(k, str(v)) for k, v in labels.items()]
            dims += [Dimension("ModelName", self._model_name), Dimension("Level", "Model")]
            self._metrics.add_metric(name, value, unit, None, dims, kind)
        except Exception:  # noqa: BLE001 - metrics must never break serving
            log.debug("could not publish metric %s", name, exc_info=True)


def peak_buckets(peaks_per_frame: list[int], bounds: tuple[int, ...] = PEAK_BUCKETS) -> list[tuple[str, int]]:
    """Cumulative bucket increments ``[(le, frames with at most le peaks), ..., ("+Inf", all)]``.

    Every bucket is listed, zeros too, so that all series exist from the first batch on.
    """
    buckets = [(str(bound), sum(c <= bound for c in peaks_per_frame)) for bound in bounds]
    return [*buckets, ("+Inf", len(peaks_per_frame))]
