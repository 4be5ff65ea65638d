"""The pixel dtypes a request may carry ("wire dtypes") and how their names are read."""

from __future__ import annotations

import numpy as np

from ..errors import BadRequest

# Name -> numpy dtype in native byte order. The order is the order used in error messages.
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name) for name in ("uint8", "uint16", "int16", "int32", "uint32", "float16", "float32", "float64")
}

ACCEPTED_DTYPES_TEXT = ", ".join(WIRE_DTYPES)


def dtype_from_name(name: str) -> np.dtype:
    """The native-order wire dtype called ``name`` (case and surrounding spaces ignored).

    Raises:
        BadRequest ``unsupported_dtype``: the name is not one of :data:`WIRE_DTYPES`.
    """
    dtype = WIRE_DTYPES.get(name.strip().lower())
    if dtype is None:
        raise BadRequest(
            "unsupported_dtype",
            f"dtype {_clip(name)!r} is not supported; accepted dtypes: {ACCEPTED_DTYPES_TEXT}.",
        )
    return dtype


def wire_dtype_name(dtype: np.dtype) -> str | None:
    """The wire name of ``dtype`` in either byte order, or ``None`` when it is not a wire dtype.

    Structured, object, string, enum-like (dtypes carrying metadata) and other dtypes give ``None``.
    """
    if dtype.fields is not None or dtype.subdtype is not None or dtype.metadata:
        return None
    if dtype.kind not in "uif":
        return None
    native = dtype.newbyteorder("=")
    for name, wire in WIRE_DTYPES.items():
        if native == wire:
            return name
    return None


def _clip(text: str, limit: int = 40) -> str:
    """``text`` shortened for an error message (a hostile header may be long)."""
    return text if len(text) <= limit else text[:limit] + "..."
