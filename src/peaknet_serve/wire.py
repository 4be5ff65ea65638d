"""What the server and its clients agree on, in one torch-free place.

Media types, header names, the default HDF5 dataset, the CXI peak layout and TorchServe's key file.
The server's decoders (:mod:`peaknet_serve.decode`) and encoders (:mod:`peaknet_serve.encode`) and
the clients (:mod:`peaknet_serve.clients`) import these names rather than spelling them again.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_MODEL = "peaknet"

# -- request bodies -------------------------------------------------------------------------------
RAW = "application/octet-stream"  # raw pixels; X-Dtype and X-Shape say what they are
NPY = "application/x-npy"
HDF5 = "application/x-hdf5"
CXI = "application/x-cxi"  # an alias of HDF5, for requests and answers
MULTIPART = "multipart/form-data"  # the body in field "data", options as further fields
JSON = "application/json"

DTYPE_HEADER = "X-Dtype"
SHAPE_HEADER = "X-Shape"
DATASET_HEADER = "X-Dataset"

#: Where CXI files (Cheetah, psocake, OM, LCLS's streamers) keep their frames, (N, ...) at any rank.
DEFAULT_DATASET = "/entry_1/data_1/data"

# -- CXI peak answers (CrystFEL's ``--peaks=cxi``) ----------------------------------------------------
CXI_PEAK_GROUP = "/entry_1/result_1"
#: Width of the (N, max_peaks) peak datasets; a frame with more keeps its brightest peaks.
CXI_MAX_PEAKS = 2048


def read_inference_key(key_file: str | Path) -> str:
    """The inference key from TorchServe's ``key_file.json`` (token authorisation)."""
    try:
        keys = json.loads(Path(key_file).read_text())
        return str(keys["inference"]["key"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{key_file}: not a TorchServe key file with an inference key") from err
