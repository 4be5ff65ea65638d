"""Array layouts of a request and their mapping onto frames of panels (N, P, H, W).

==========  ==========================  ==========================
 ndim        raw / npy                   HDF5 (CXI convention)
==========  ==========================  ==========================
 2           (H, W) -> (1, 1, H, W)      (H, W) -> (1, 1, H, W)
 3           (P, H, W) -> (1, P, H, W)   (N, H, W) -> (N, 1, H, W)
 4           (N, P, H, W)                (N, P, H, W)
==========  ==========================  ==========================
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import BadRequest

FramesShape = tuple[int, int, int, int]

LAYOUTS_TEXT = "2-D (H, W), 3-D (P, H, W) or 4-D (N, P, H, W)"
HDF5_LAYOUTS_TEXT = "2-D (H, W), 3-D (N, H, W) stack of single-panel frames or 4-D (N, P, H, W)"


def frames_shape(shape: Sequence[int], *, stack_is_frames: bool = False) -> FramesShape:
    """The (N, P, H, W) shape that an array of ``shape`` is read as.

    Args:
        shape: the array's shape, 2 to 4 positive ints.
        stack_is_frames: read a 3-D shape as N single-panel frames (HDF5/CXI) instead of one frame
            of P panels (raw, npy).

    Raises:
        BadRequest ``bad_shape``: wrong number of dimensions, or a dimension that is not positive.
    """
    accepted = HDF5_LAYOUTS_TEXT if stack_is_frames else LAYOUTS_TEXT
    dims = tuple(int(d) for d in shape)
    if not 2 <= len(dims) <= 4:
        raise BadRequest("bad_shape", f"shape {dims} has {len(dims)} dimensions; accepted layouts: {accepted}.")
    if any(d <= 0 for d in dims):
        raise BadRequest("bad_shape", f"shape {dims} has an empty or negative dimension.")
    if len(dims) == 2:
        return (1, 1, *dims)
    if len(dims) == 3:
        return (dims[0], 1, dims[1], dims[2]) if stack_is_frames else (1, *dims)
    return dims  # type: ignore[return-value]
