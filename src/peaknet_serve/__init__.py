"""peaknet-serve: PeakNet Bragg-peak finding behind TorchServe.

Importing this package loads nothing heavy: the clients (:mod:`peaknet_serve.clients`) and the
shared wire constants (:mod:`peaknet_serve.wire`) run without torch. The server side:

- :mod:`peaknet_serve.model` — the PeakNet network (ConvNeXt V2 backbone, BiFPN, segmentation head),
  state-dict compatible with the public PeakNet;
- :mod:`peaknet_serve.checkpoint` — config + checkpoint -> eval-mode model in bf16/fp16/fp32;
- :mod:`peaknet_serve.config` — handler settings and the serving mode (dtype, autocast, compile, layout);
- :mod:`peaknet_serve.pipeline` — :func:`~peaknet_serve.pipeline.build_finder`: load, cast, compile, tune,
  warm up; used by the handler, the benchmarks and the evaluation alike;
- :mod:`peaknet_serve.decode` — request bytes -> (N, P, H, W) frames in their wire dtype (host, zero-copy);
- :mod:`peaknet_serve.device` — upload, normalise, network, peak extraction on the device;
- :mod:`peaknet_serve.encode` — JSON and CrystFEL CXI answers;
- :mod:`peaknet_serve.serve` — the TorchServe handler, HTTP details and metrics.
"""

__version__ = "0.2.0"
