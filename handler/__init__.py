"""peaknet-serve: PeakNet Bragg-peak finding behind TorchServe.

Layout (one module per concern):

- :mod:`handler.model` — the PeakNet network (ConvNeXt V2 backbone, BiFPN, segmentation head),
  state-dict compatible with the public PeakNet;
- :mod:`handler.checkpoint` — :func:`load_peaknet`: config + checkpoint -> eval-mode model in bf16/fp16/fp32;
- :mod:`handler.precision` — precision names and the one place that resolves the serving dtype;
- :mod:`handler.decode` — request bytes -> (N, P, H, W) frames in their wire dtype (host, zero-copy);
- :mod:`handler.transfer` — pinned staging and host-to-device copies in the wire dtype;
- :mod:`handler.preprocess` — on-device sanitise / instance-norm / pad / cast;
- :mod:`handler.inference` — micro-batched network runs and peak extraction on the device;
- :mod:`handler.postprocess` — peak mask, connected components, centroids (pure torch);
- :mod:`handler.response` — JSON and CrystFEL CXI answers;
- :mod:`handler.settings`, :mod:`handler.metrics` — configuration and TorchServe metrics;
- :mod:`handler.peaknet_handler` — the TorchServe handler tying them together.
"""

from handler.checkpoint import CheckpointError, load_peaknet
from handler.precision import dtype_name, parse_dtype, resolve_precision

__all__ = ["CheckpointError", "PeakNetHandler", "dtype_name", "load_peaknet", "parse_dtype",
           "resolve_precision"]


def __getattr__(name: str):
    # The TorchServe handler imports TorchServe; load it only when asked for.
    if name == "PeakNetHandler":
        from handler.peaknet_handler import PeakNetHandler
        return PeakNetHandler
    raise AttributeError(f"module 'handler' has no attribute {name!r}")
