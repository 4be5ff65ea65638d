"""A deployment's bad-pixel mask: the detector's known dead, hot and shadowed pixels.

The file is named by the handler setting ``bad_pixel_mask`` (or ``PEAKNET_BAD_PIXEL_MASK``), read
once when a worker starts, never by a request. Conventions (those of psana, OM and CXI files):
non-zero = good pixel, 0 = bad.

Formats:

* ``.npy``: a (P, H, W) or (H, W) numeric or bool array (loaded without pickle);
* HDF5 (``.h5``, ``.hdf5``, ``.cxi``, ``.nxs``): the dataset ``/entry_1/data_1/mask`` (a CXI file's),
  else ``/mask``, else the file's only dataset; ``file.h5::/path/in/file`` names another one.

Frames of the mask's (P, H, W) get it; a request of any other panel layout is refused (400
``mask_mismatch``), since a mask cannot be guessed for another detector.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

HDF5_SUFFIXES = (".h5", ".hdf5", ".cxi", ".nxs")
HDF5_CANDIDATES = ("/entry_1/data_1/mask", "/mask")
DATASET_SEPARATOR = "::"


def split_mask_path(value: str) -> tuple[Path, str | None]:
    """``"file.h5::/dataset"`` -> (Path("file.h5"), "/dataset"); a plain path -> (path, None)."""
    path, _, dataset = value.partition(DATASET_SEPARATOR)
    return Path(path).expanduser(), (dataset or None)


def _only_dataset(h5: h5py.File) -> str:
    names: list[str] = []
    h5.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    if len(names) != 1:
        raise ValueError(
            f"{h5.filename}: no {' or '.join(HDF5_CANDIDATES)} and {len(names)} datasets "
            f"({', '.join(names[:8]) or 'none'}); name one as {h5.filename}{DATASET_SEPARATOR}/path"
        )
    return names[0]


def _read_hdf5(path: Path, dataset: str | None) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        if dataset is None:
            dataset = next((name for name in HDF5_CANDIDATES if isinstance(h5.get(name), h5py.Dataset)), None)
            dataset = dataset or _only_dataset(h5)
        item = h5.get(dataset)
        if not isinstance(item, h5py.Dataset):
            raise ValueError(f"{path}: no dataset {dataset!r}")
        return np.asarray(item[()])


def as_good_pixels(mask: np.ndarray, source: str = "the mask") -> np.ndarray:
    """(P, H, W) bool, True = good, from a (P, H, W) or (H, W) array (non-zero = good).

    Raises:
        ValueError: another rank, an empty dimension, a dtype that is not numeric or bool, or
            no good pixel at all (an inverted mask: bad = 1).
    """
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"{source}: dtype {mask.dtype} is not numeric or bool")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or 0 in mask.shape:
        raise ValueError(f"{source}: shape {mask.shape}; expected (panels, H, W) or (H, W)")
    good = mask != 0
    if not good.any():
        raise ValueError(f"{source}: every pixel is marked bad; masks mark good pixels non-zero (1 = good)")
    return np.ascontiguousarray(good)


def load_bad_pixel_mask(value: str, base: Path = Path(".")) -> np.ndarray:
    """Read the mask named by the setting ``value`` (relative paths from ``base``).

    Returns:
        (P, H, W) bool, True = good pixel.

    Raises:
        ValueError: an unreadable file, no such dataset, or a mask :func:`as_good_pixels` refuses.
    """
    path, dataset = split_mask_path(value)
    path = path if path.is_absolute() else base / path
    try:
        if path.suffix.lower() == ".npy":
            if dataset is not None:
                raise ValueError(f"{path}: a .npy file holds one array; drop {DATASET_SEPARATOR}{dataset}")
            array = np.load(path, allow_pickle=False)
        elif path.suffix.lower() in HDF5_SUFFIXES:
            array = _read_hdf5(path, dataset)
        else:
            raise ValueError(f"{path}: not a .npy or HDF5 ({', '.join(HDF5_SUFFIXES)}) file")
    except OSError as exc:
        raise ValueError(f"bad-pixel mask {path}: {exc}") from exc
    return as_good_pixels(array, str(path))


def mask_summary(good: np.ndarray) -> str:
    """``"(16, 352, 384), 1234 bad pixels (0.06%)"``."""
    bad = int(good.size - np.count_nonzero(good))
    return f"{tuple(good.shape)}, {bad} bad pixels ({100 * bad / good.size:.2f}%)"
