"""Custom handler metrics, published through TorchServe's metrics API (Prometheus on :8082).

Names (Prometheus adds no prefix; TorchServe adds the ``ModelName`` and ``Level`` labels):

==============================  =========  =================================================
``PeakNetFramesServed``         counter    frames answered with 200
``PeakNetPanelsServed``         counter    panels run through the network
``PeakNetBadRequests``          counter    4xx answers, label ``ErrorType`` (decoder's type)
``PeakNetServerErrors``         counter    5xx answers, label ``ErrorType``
``PeakNetNonFinitePixels``      counter    NaN/inf pixels set to 0 before inference
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
==============================  =========  =================================================
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

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

    def timing(self, name: str, ms: float) -> None:
        """A stage time: the gauge ``name`` (last batch) and the counter ``name + "Total"``."""
        self.gauge(name, ms)
        self.count(f"{name}Total", ms)

    def _emit(self, name: str, value: float, unit: str, kind: Any, labels: dict[str, str]) -> None:
        if self._metrics is None:
            return
        try:
            dims = [Dimension(k, str(v)) for k, v in labels.items()]
            dims += [Dimension("ModelName", self._model_name), Dimension("Level", "Model")]
            self._metrics.add_metric(name, value, unit, None, dims, kind)
        except Exception:  # noqa: BLE001 - metrics must never break serving
            log.debug("could not publish metric %s", name, exc_info=True)
