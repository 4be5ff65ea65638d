"""Which encoding a request uses: its Content-Type, checked against the body's magic bytes."""

from __future__ import annotations

from typing import NoReturn

from ..errors import BadRequest, UnsupportedMediaType

NPY_MAGIC = b"\x93NUMPY"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# Media type (parameters stripped, lower case) -> encoding. ``None`` (no type; also a multipart
# part, whose fields TorchServe has already split) means: recognise the body by its magic bytes.
MEDIA_TYPES: dict[str, str | None] = {
    "application/octet-stream": "raw",
    "application/x-npy": "npy",
    "application/npy": "npy",
    "application/x-hdf5": "hdf5",
    "application/x-hdf": "hdf5",
    "application/x-cxi": "hdf5",
    "multipart/form-data": None,
}

ACCEPTED_TYPES_TEXT = (
    "application/octet-stream (raw bytes with X-Dtype and X-Shape), "
    "application/x-npy, application/x-hdf5 (also application/x-cxi), "
    "or multipart/form-data with the body in field 'data'"
)


def media_type(content_type: str | bytes | None) -> str | None:
    """The bare, lower-case media type of a Content-Type value; ``None`` when absent or empty."""
    if content_type is None:
        return None
    if isinstance(content_type, (bytes, bytearray)):
        content_type = bytes(content_type).decode("latin-1")
    bare = content_type.split(";", 1)[0].strip().lower()
    return bare or None


def sniff_encoding(view: memoryview) -> str:
    """``"npy"`` or ``"hdf5"`` by the body's leading magic bytes, otherwise ``"raw"``."""
    head = bytes(view[:8])
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head == HDF5_MAGIC:
        return "hdf5"
    return "raw"


def has_hdf5_signature(view: memoryview) -> bool:
    """Whether the HDF5 signature is where the library looks for it: at byte 0, 512, 1024, ..."""
    offset = 0
    while offset + len(HDF5_MAGIC) <= len(view):
        if view[offset : offset + len(HDF5_MAGIC)] == HDF5_MAGIC:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def declared_encoding(content_type: str | bytes | None) -> str | None:
    """The encoding a Content-Type declares; ``None`` when the body must be recognised by its bytes.

    Raises:
        UnsupportedMediaType ``unsupported_media_type``: an unknown Content-Type.
    """
    bare = media_type(content_type)
    if bare is None:
        return None
    if bare not in MEDIA_TYPES:
        shown = bare if len(bare) <= 60 else bare[:60] + "..."
        raise UnsupportedMediaType(
            "unsupported_media_type",
            f"Content-Type {shown!r} is not supported; accepted: {ACCEPTED_TYPES_TEXT}.",
        )
    return MEDIA_TYPES[bare]


def confirm_encoding(declared: str | None, view: memoryview) -> str:
    """The encoding (``"raw"``, ``"npy"`` or ``"hdf5"``) to decode ``view`` with.

    ``None`` sniffs the magic bytes. ``"raw"`` (``application/octet-stream``) stays raw even when
    the bytes start with a file signature. A declared ``.npy`` or HDF5 body must carry that
    format's signature.

    Raises:
        BadRequest ``content_type_mismatch``: the body is not in the declared format.
    """
    if declared is None:
        return sniff_encoding(view)
    if declared == "npy" and bytes(view[: len(NPY_MAGIC)]) != NPY_MAGIC:
        _mismatch("a .npy file", "it does not start with b'\\x93NUMPY'", view)
    if declared == "hdf5" and not has_hdf5_signature(view):
        _mismatch("an HDF5 file", "no HDF5 signature at byte 0, 512, 1024, ...", view)
    return declared


def _mismatch(kind: str, reason: str, view: memoryview) -> NoReturn:
    actual = sniff_encoding(view)
    looks_like = {
        "npy": " It looks like a .npy file: send it as application/x-npy.",
        "hdf5": " It looks like an HDF5 file: send it as application/x-hdf5.",
        "raw": "",
    }[actual]
    raise BadRequest(
        "content_type_mismatch",
        f"the Content-Type declares {kind} but the body is not one ({reason}).{looks_like}",
    )
