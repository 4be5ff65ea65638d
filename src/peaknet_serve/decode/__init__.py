"""Request decoding: bytes + Content-Type + ``X-*`` options -> (N, P, H, W) frames in the wire dtype.

Framework-free (NumPy, h5py, hdf5plugin only). Every problem with a request is raised as a
:class:`peaknet_serve.errors.RequestError` carrying its HTTP status; nothing else escapes.
"""

from .dtypes import WIRE_DTYPES
from .hdf5 import DEFAULT_DATASET, decode_hdf5
from .hdf5_sandbox import Hdf5Sandbox, default_sandbox
from .layout import frames_shape
from .limits import DecodeLimits
from .media import MEDIA_TYPES
from .request import DecodedFrames, decode_request

__all__ = [
    "DEFAULT_DATASET",
    "MEDIA_TYPES",
    "WIRE_DTYPES",
    "DecodeLimits",
    "DecodedFrames",
    "Hdf5Sandbox",
    "decode_hdf5",
    "decode_request",
    "default_sandbox",
    "frames_shape",
]
