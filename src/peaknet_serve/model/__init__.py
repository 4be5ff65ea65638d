"""PeakNet architecture: ConvNeXt V2 backbone, BiFPN and segmentation head."""

from peaknet_serve.model.peaknet import PeakNet, PeakNetConfig, count_parameters

__all__ = ["PeakNet", "PeakNetConfig", "count_parameters"]
