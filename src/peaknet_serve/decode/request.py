"""One request body (+ Content-Type + options) -> frames of panels in the wire dtype."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import BadRequest, ServerFault
from .buffer import BytesLike, byte_view
from .dtypes import wire_dtype_name
from .hdf5_sandbox import default_sandbox
from .limits import DecodeLimits, check_body_size
from .mask import decode_mask
from .media import ACCEPTED_TYPES_TEXT, confirm_encoding, declared_encoding
from .npy import decode_npy
from .options import normalise_options
from .raw import decode_raw

DEFAULT_LIMITS = DecodeLimits()

# (body, dataset path or None, limits) -> (N, P, H, W) frames
Hdf5Reader = Callable[[memoryview, "str | None", DecodeLimits], np.ndarray]


@dataclass(frozen=True)
class DecodedFrames:
    """The frames of one request, ready to be staged to the device in their own dtype.

    Attributes:
        array: (N, P, H, W) in the wire dtype (uint8, uint16, int16, int32, uint32, float16,
            float32 or float64), native byte order, C-contiguous. For raw and npy bodies it is a
            zero-copy view of the body when alignment allows (then read-only if the body is
            ``bytes``). NaN/inf pixels are passed through untouched.
        encoding: ``"raw"``, ``"npy"``, ``"hdf5"``, or ``"oip"`` (an Open Inference Protocol tensor).
        good_pixels: (M, P, H, W) bool, True = good pixel, M 1 (every frame) or N: the request's
            own bad-pixel mask (:mod:`peaknet_serve.decode.mask`); None when it sent none.
    """

    array: np.ndarray
    encoding: str
    good_pixels: np.ndarray | None = None

    @property
    def dtype_name(self) -> str:
        """The wire dtype's name, e.g. ``"uint16"``."""
        name = wire_dtype_name(self.array.dtype)
        assert name is not None, self.array.dtype
        return name


def decode_request(
    body: BytesLike,
    content_type: str | None,
    options: Mapping[str, str] | None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    hdf5_reader: Hdf5Reader | None = None,
    mask: BytesLike | None = None,
) -> DecodedFrames:
    """Decode one request into frames.

    Args:
        body: the request body, or the ``data`` field of a multipart form.
        content_type: the Content-Type (parameters ignored); ``None`` for a multipart field or
            an absent header, in which case the body is recognised by its magic bytes
            (``.npy``, HDF5), else read as raw bytes.
        options: the ``X-Dtype`` / ``X-Shape`` / ``X-Dataset`` headers and/or the ``dtype`` /
            ``shape`` / ``dataset`` form fields (keys case-insensitive); other keys are ignored.
        limits: size limits, all checked before the pixels are allocated.
        hdf5_reader: decodes HDF5 bodies; default: the process-wide
            :class:`~peaknet_serve.decode.hdf5_sandbox.Hdf5Sandbox` (a child process, so a file that
            crashes HDF5 cannot take this process down). ``decode_hdf5`` reads in-process.
        mask: the multipart part ``mask`` (a ``.npy`` or raw ``uint8`` bad-pixel mask of the
            frames, :func:`~peaknet_serve.decode.mask.decode_mask`), or None.

    Returns:
        The frames, the encoding they came in and the request's good pixels.

    Raises:
        RequestError: every problem with the request (400, 413 or 415; ``bad_mask`` for the
            mask); nothing else escapes for any body, Content-Type, options or mask.
        ServerFault: ``hdf5_reader_failed`` (500) when the default HDF5 reader process died,
            hung or broke its protocol on this body (the server's fault: the next request gets
            a fresh reader).
    """
    view = byte_view(body)
    check_body_size(len(view), limits)
    declared = declared_encoding(content_type)
    if len(view) == 0:
        raise BadRequest("empty_body", f"the request body is empty; send frames as {ACCEPTED_TYPES_TEXT}.")
    encoding = confirm_encoding(declared, view)
    opts = normalise_options(options)
    if encoding == "npy":
        array = decode_npy(view, limits)
    elif encoding == "hdf5":
        array = hdf5_reader(view, opts.get("dataset"), limits) if hdf5_reader else _sandboxed_hdf5(view, opts, limits)
    else:
        array = decode_raw(view, opts, limits)
    good = None if mask is None else decode_mask(mask, array.shape, limits)
    return DecodedFrames(array=array, encoding=encoding, good_pixels=good)


def _sandboxed_hdf5(view: memoryview, opts: Mapping[str, str], limits: DecodeLimits) -> np.ndarray:
    """The default sandbox's decode; a failure of the reader process itself is a :class:`ServerFault`.

    The sandbox answers a reader that died, hung or broke its protocol with a ``bad_hdf5``
    :class:`BadRequest` and restarts it; the restart tells that case apart from a file the reader
    refused.
    """
    sandbox = default_sandbox()
    restarts = sandbox.restarts
    try:
        return sandbox.decode(view, opts.get("dataset"), limits)
    except BadRequest:
        if sandbox.restarts == restarts:
            raise
        raise ServerFault(
            "hdf5_reader_failed",
            "the HDF5 reader process died, hung or broke its protocol on this "
            "request and was restarted; retry once (a file that fails this way again is a server "
            "bug worth reporting).",
        ) from None
