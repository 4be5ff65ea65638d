"""Request options: the ``X-Dtype`` / ``X-Shape`` / ``X-Dataset`` / ``X-Peak-Threshold`` headers or form fields."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import NoReturn

from ..errors import BadRequest

OPTION_NAMES = ("dtype", "shape", "dataset", "threshold")
_ALIASES = {"peak-threshold": "threshold"}  # header X-Peak-Threshold, form field threshold
_HEADERS = {"threshold": "X-Peak-Threshold"}
MAX_OPTION_CHARS = 1024
MASK_AS_PART_TEXT = (
    "send the bad-pixel mask as the file part 'mask' of a multipart/form-data request, "
    "beside the frames in part 'data' (curl -F data=@frames.npy -F mask=@mask.npy)"
)

_DIMS = r"\s*([0-9]+(?:\s*[,x]\s*[0-9]+)*)\s*,?\s*"
_SHAPE_RE = re.compile(rf"^\s*(?:\({_DIMS}\)|\[{_DIMS}\]|{_DIMS})\s*$")


def normalise_options(options: Mapping[str, object] | None) -> dict[str, str]:
    """The known options by bare lower-case name: ``{"dtype": ..., "shape": ..., "dataset": ..., "threshold": ...}``.

    Keys are case-insensitive and may carry the header prefix ``x-`` (``X-Dtype`` and the form
    field ``dtype`` are the same option; the header ``X-Peak-Threshold`` is the form field
    ``threshold``). Values may be ``str`` or UTF-8 bytes (TorchServe hands
    form fields over as ``bytearray``). Other keys (all the other headers) are ignored, except
    ``mask`` (``X-Mask``): a bad-pixel mask is a multipart part, never an option.

    Raises:
        BadRequest ``bad_option``: a value that is not UTF-8 text, is too long, two spellings
            of one option with different values, or an option ``mask``.
    """
    found: dict[str, str] = {}
    for key, value in (options or {}).items():
        if not isinstance(key, str):
            continue
        name = key.strip().lower()
        name = name[2:] if name.startswith("x-") else name
        name = _ALIASES.get(name, name)
        if name == "mask":
            raise BadRequest("bad_option", f"the mask is not an option (header or field {key!r}): {MASK_AS_PART_TEXT}.")
        if name not in OPTION_NAMES:
            continue
        text = _option_text(name, value).strip()
        if name in found and found[name] != text:
            raise BadRequest(
                "bad_option",
                f"option {name!r} was given twice with different values "
                f"(header {_HEADERS.get(name, 'X-' + name.capitalize())} and form field {name!r}); give it once.",
            )
        found[name] = text
    return found


def parse_threshold(text: str) -> float:
    """Read a per-request peak probability threshold: a number strictly between 0 and 1.

    Raises:
        BadRequest ``bad_option``: anything else.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise BadRequest(
            "bad_option",
            f"threshold {shown!r} is not a number strictly between 0 and 1 "
            "(the probability a pixel must reach to count as a peak pixel).",
        )
    return value


def request_threshold(options: Mapping[str, object] | None) -> float | None:
    """The request's ``X-Peak-Threshold`` header / ``threshold`` form field, or None when absent.

    Raises:
        BadRequest ``bad_option``: see :func:`normalise_options` and :func:`parse_threshold`.
    """
    text = normalise_options(options).get("threshold")
    return None if text is None else parse_threshold(text)


def parse_shape(text: str) -> tuple[int, ...]:
    """Read ``"16,352,384"`` (also ``"(16, 352, 384)"``, ``"16x352x384"``) as a tuple of ints.

    Only the syntax is checked here; the number of dimensions and the sizes are checked by
    :func:`~peaknet_serve.decode.layout.frames_shape` and :func:`~peaknet_serve.decode.limits.check_frames_shape`.

    Raises:
        BadRequest ``bad_shape``: not a list of non-negative integers.
    """
    match = _SHAPE_RE.match(text)
    if match is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise BadRequest(
            "bad_shape",
            f"shape {shown!r} is not a comma-separated list of non-negative integers such as '16,352,384'.",
        )
    dims = next(group for group in match.groups() if group is not None)
    return tuple(int(d) for d in re.split(r"\s*[,x]\s*", dims))


def _option_text(name: str, value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value[: MAX_OPTION_CHARS * 4 + 1])  # a UTF-8 character is at most 4 bytes
        if len(raw) > MAX_OPTION_CHARS * 4:
            _too_long(name)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("bad_option", f"option {name!r} is not UTF-8 text.") from None
    if not isinstance(value, str):
        raise BadRequest("bad_option", f"option {name!r} must be text, got {type(value).__name__}.")
    if len(value) > MAX_OPTION_CHARS:
        _too_long(name)
    return value


def _too_long(name: str) -> NoReturn:
    raise BadRequest("bad_option", f"option {name!r} is longer than {MAX_OPTION_CHARS} characters.")
