"""Bounded decoders for the HDF5 filters a request may use, one chunk at a time.

HDF5's own filter callbacks size their output from the compressed stream (gzip and bzip2 grow
a buffer until the stream ends, zstd and LZ4 trust a size in the header) and hand back however
many bytes they produced, so a small chunk can inflate to gigabytes and a short one leaves the
rest of the chunk buffer holding whatever the allocator had there. The reader therefore never
runs the HDF5 pipeline on chunk data: it takes the stored bytes of each chunk and undoes the
filters itself, here, where every stage knows the exact size it must produce:

==============  ======  ======================================================================
 filter          id      decoded with
==============  ======  ======================================================================
 shuffle         2       NumPy (undone while the chunk is copied into the frames)
 fletcher32      3       NumPy checksum, verified, then stripped
 gzip            1       ``zlib``, output taken 1 MiB at a time
 bzip2           307     ``bz2``, output taken 1 MiB at a time
 zstd            32015   ``compression.zstd`` (``backports.zstd``), 1 MiB at a time, window capped
 lz4             32004   liblz4's ``LZ4_decompress_safe`` (``lz4`` package), per block, in place
 bitshuffle      32008   the same LZ4 / zstd per block, bit transpose in NumPy
 blosc           32001   ``blosc``, after the header's sizes match the chunk's
 lzf             32000   a pure-Python LZF decoder writing into the chunk's buffer
==============  ======  ======================================================================

A decoder produces exactly the declared number of bytes or raises ``400 bad_hdf5``: a stream
that ends early, runs on, leaves trailing bytes, or claims another size is refused, so the
frames never hold bytes the request did not determine. No decoder holds more than the
chunk's decoded size plus one fixed piece (1 MiB) at a time.
"""

from __future__ import annotations

import bz2
import ctypes
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

try:
    import lz4.block as _lz4_block
except ImportError:  # pragma: no cover - lz4 and bitshuffle chunks are then refused
    _lz4_block = None
try:  # liblz4's bounds-checked decoder, as linked into the lz4 package: decodes straight into our buffer
    _LZ4_DECOMPRESS_SAFE = ctypes.CDLL(_lz4_block._block.__file__).LZ4_decompress_safe
    _LZ4_DECOMPRESS_SAFE.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    _LZ4_DECOMPRESS_SAFE.restype = ctypes.c_int
except (AttributeError, OSError):  # pragma: no cover - then lz4.block.decompress, one copy more
    _LZ4_DECOMPRESS_SAFE = None
try:
    from compression import zstd as _zstd  # Python >= 3.14
except ImportError:
    try:
        from backports import zstd as _zstd
    except ImportError:  # pragma: no cover - zstd chunks are then refused
        _zstd = None
try:
    import blosc as _blosc
    from blosc.blosc_extension import error as _BloscError
except ImportError:  # pragma: no cover - blosc chunks are then refused
    _blosc = None

PIECE_BYTES = 1 << 20
"""The most output a streaming decoder returns at once."""

MIN_BLOCK_BYTES = 1024
"""Smallest LZ4 / bitshuffle block accepted when a chunk has more than one (bounds the work)."""

LZF_MAX_DECODED_BYTES = 32 << 20
"""Most bytes of frames an LZF dataset may decode to: its decoder is pure Python (~3 MB/s)."""

FILTER_DEFLATE, FILTER_SHUFFLE, FILTER_FLETCHER32 = 1, 2, 3
FILTER_BZIP2, FILTER_LZF, FILTER_BLOSC, FILTER_LZ4, FILTER_BITSHUFFLE, FILTER_ZSTD = (
    307,
    32000,
    32001,
    32004,
    32008,
    32015,
)

_BSHUF_LZ4, _BSHUF_ZSTD = 2, 3
_BSHUF_TARGET_BLOCK_BYTES, _BSHUF_MIN_BLOCK, _BSHUF_MULT = 8192, 128, 8


@dataclass(frozen=True)
class Filter:
    """One stage of a dataset's filter pipeline, as its creation property list declares it.

    Attributes:
        code: the registered HDF5 filter id.
        flags: HDF5's flags for the stage (``H5Z_FLAG_OPTIONAL``, ...).
        values: the filter's client data values.
    """

    code: int
    flags: int
    values: tuple[int, ...]

    @property
    def name(self) -> str:
        return FILTER_NAMES.get(self.code, str(self.code))


FILTER_NAMES = {
    FILTER_DEFLATE: "gzip",
    FILTER_SHUFFLE: "shuffle",
    FILTER_FLETCHER32: "fletcher32",
    FILTER_BZIP2: "bzip2",
    FILTER_LZF: "lzf",
    FILTER_BLOSC: "blosc",
    FILTER_LZ4: "lz4",
    FILTER_BITSHUFFLE: "bitshuffle",
    FILTER_ZSTD: "zstd",
}

# (stored bytes, decoded size, the stage, itemsize, where to write or None) -> exactly ``size``
# bytes (``out`` itself when given), or ChunkError
Decoder = Callable[[memoryview, int, Filter, int, "np.ndarray | None"], np.ndarray]


class ChunkError(Exception):
    """The stored bytes of one chunk do not decode to its declared size."""


IN_PIECE_BYTES = 1 << 16
"""Compressed input is handed to streaming decoders this much at a time (bounds their copies)."""


def _output(out: np.ndarray | None, size: int) -> np.ndarray:
    """``out`` (a flat uint8 array of ``size`` bytes), or a fresh zero-filled one (calloc: its pages
    never hold another request's bytes)."""
    return np.zeros(size, np.uint8) if out is None else out


# --- streaming compressors: output taken at most PIECE_BYTES at a time ------------------------


def decode_gzip(raw: memoryview, size: int, stage: Filter, itemsize: int, out: np.ndarray | None = None) -> np.ndarray:
    """A zlib stream (HDF5's deflate filter) -> exactly ``size`` bytes."""
    out = _output(out, size)
    target = memoryview(out)
    inflater = zlib.decompressobj()
    filled = position = 0
    try:
        while not inflater.eof:
            pending = raw[position : position + IN_PIECE_BYTES]
            position += len(pending)
            while not inflater.eof:
                piece = inflater.decompress(pending, min(PIECE_BYTES, size - filled + 1))
                pending = inflater.unconsumed_tail
                filled = _append(target, filled, piece, size)
                if not piece and not pending:
                    break
            if not inflater.eof and position >= len(raw):
                raise ChunkError(f"the gzip stream ends after {filled} of {size} bytes")
    except zlib.error as error:
        raise ChunkError(f"corrupt gzip stream ({error})") from None
    return _finish(out, filled, size, len(inflater.unused_data) + len(raw) - position, "gzip")


def decode_bzip2(raw: memoryview, size: int, stage: Filter, itemsize: int, out: np.ndarray | None = None) -> np.ndarray:
    """A bzip2 stream -> exactly ``size`` bytes."""
    return _decode_stream(bz2.BZ2Decompressor(), raw, size, "bzip2", OSError, out)


def decode_zstd(raw: memoryview, size: int, stage: Filter, itemsize: int, out: np.ndarray | None = None) -> np.ndarray:
    """One zstd frame -> exactly ``size`` bytes (the decoder's window is capped at ~``size``)."""
    return _decode_stream(_zstd_decompressor(size), raw, size, "zstd", _zstd.ZstdError, out)


def _zstd_decompressor(size: int):
    window_log = min(max(10, (max(size, 1) - 1).bit_length()), 30)
    return _zstd.ZstdDecompressor(options={_zstd.DecompressionParameter.window_log_max: window_log})


def _decode_stream(
    decompressor, raw: memoryview, size: int, name: str, error_type, out: np.ndarray | None = None
) -> np.ndarray:
    out = _output(out, size)
    target = memoryview(out)
    filled = position = 0
    pending: memoryview | bytes = b""
    try:
        while not decompressor.eof:
            if decompressor.needs_input:
                if position >= len(raw):
                    raise ChunkError(f"the {name} stream ends after {filled} of {size} bytes")
                pending = raw[position : position + IN_PIECE_BYTES]
                position += len(pending)
            piece = decompressor.decompress(pending, max_length=min(PIECE_BYTES, size - filled + 1))
            pending = b""
            filled = _append(target, filled, piece, size)
    except (error_type, ValueError, EOFError) as error:
        raise ChunkError(f"corrupt {name} stream ({error})") from None
    return _finish(out, filled, size, len(decompressor.unused_data) + len(raw) - position, name)


def _append(target: memoryview, filled: int, piece: bytes, size: int) -> int:
    if len(piece) > size - filled:
        raise ChunkError(f"the chunk decodes to more than its declared {size} bytes")
    target[filled : filled + len(piece)] = piece
    return filled + len(piece)


def _finish(out: np.ndarray, filled: int, size: int, unused: int, name: str) -> np.ndarray:
    if filled != size:
        raise ChunkError(f"the {name} stream decodes to {filled} bytes; the chunk holds {size}")
    if unused:
        raise ChunkError(f"{unused} bytes follow the end of the {name} stream")
    return out


# --- block formats with sizes in their headers ------------------------------------------------


def decode_lz4(raw: memoryview, size: int, stage: Filter, itemsize: int, out: np.ndarray | None = None) -> np.ndarray:
    """HDF5's LZ4 framing -> exactly ``size`` bytes.

    Layout: total size (u64 BE), block size (u32 BE), then per block its stored size (u32 BE)
    and the LZ4 block (stored raw when that size equals the block's decoded size).
    """
    if len(raw) < 12:
        raise ChunkError(f"an LZ4 chunk of {len(raw)} bytes has no complete header")
    total, block = _be(raw, 0, 8), _be(raw, 8, 4)
    if total != size:
        raise ChunkError(f"the LZ4 header declares {total} bytes; the chunk holds {size}")
    block = min(block, total)
    _check_blocks(block, total, "LZ4")
    out = _output(out, size)
    position, filled = 12, 0
    while filled < size:
        length = min(block, size - filled)
        stored, position = _sized_block(raw, position, "LZ4")
        if len(stored) == length:
            out[filled : filled + length] = np.frombuffer(stored, np.uint8)
        else:
            _lz4_into(stored, out[filled : filled + length])
        filled += length
    if position != len(raw):
        raise ChunkError(f"{len(raw) - position} bytes follow the last LZ4 block")
    return out


def decode_bitshuffle(
    raw: memoryview, size: int, stage: Filter, itemsize: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Bitshuffle (optionally LZ4- or zstd-compressed per block) -> exactly ``size`` bytes.

    Compressed layout: total size (u64 BE), block size in bytes (u32 BE), then per block of
    ``block`` elements its stored size (u32 BE) and the compressed bit-transposed block; a last
    block of the remaining multiple of 8 elements; the final ``n % 8`` elements stored raw.
    """
    values = stage.values
    if len(values) < 3 or values[2] != itemsize:
        raise ChunkError(f"bitshuffle's element size {values[2:3]} is not the datatype's {itemsize} bytes")
    compression = values[4] if len(values) > 4 else 0
    position = 0
    if compression in (_BSHUF_LZ4, _BSHUF_ZSTD):
        if compression == _BSHUF_LZ4 and _lz4_block is None or compression == _BSHUF_ZSTD and _zstd is None:
            raise ChunkError("this server cannot decode bitshuffle's compression")
        if len(raw) < 12:
            raise ChunkError(f"a bitshuffle chunk of {len(raw)} bytes has no complete header")
        total = _be(raw, 0, 8)
        if total != size:
            raise ChunkError(f"the bitshuffle header declares {total} bytes; the chunk holds {size}")
        block = _be(raw, 8, 4) // itemsize
        position = 12
    elif compression == 0:
        block = values[3] if len(values) > 3 else 0
    else:
        raise ChunkError(f"bitshuffle compression {compression} is not one this server decodes")
    if block == 0:
        block = max(_BSHUF_TARGET_BLOCK_BYTES // itemsize // _BSHUF_MULT * _BSHUF_MULT, _BSHUF_MIN_BLOCK)
    if block % _BSHUF_MULT:
        raise ChunkError(f"bitshuffle block of {block} elements is not a multiple of 8")
    count = size // itemsize
    blocks = [block] * (count // block)
    if count % block - count % block % _BSHUF_MULT:
        blocks.append(count % block - count % block % _BSHUF_MULT)
    if len(blocks) > 1 and block * itemsize < MIN_BLOCK_BYTES:
        raise ChunkError(f"bitshuffle blocks of {block * itemsize} bytes are smaller than {MIN_BLOCK_BYTES}")
    out = _output(out, size)
    filled = 0
    per_group = max(1, PIECE_BYTES // (block * itemsize))
    # sized by the blocks the chunk holds, not by the header's block size (which may exceed the chunk)
    group = np.empty(
        min(len(blocks), per_group) * max(blocks, default=0) * itemsize, np.uint8
    )  # each byte decoded before use
    for first in range(0, len(blocks), per_group):
        members = blocks[first : first + per_group]
        used = 0
        for elements in members:  # decode a group of blocks, then undo their bit transposes at once
            length = elements * itemsize
            place = group[used : used + length]
            if compression == 0:
                place[:] = np.frombuffer(_take(raw, position, length, "bitshuffle"), np.uint8)
                position += length
            else:
                stored, position = _sized_block(raw, position, "bitshuffle")
                if compression == _BSHUF_LZ4:
                    _lz4_into(stored, place)
                else:
                    _decode_stream(_zstd_decompressor(length), stored, length, "zstd", _zstd.ZstdError, place)
            used += length
        full = sum(1 for elements in members if elements == block)
        out[filled : filled + full * block * itemsize] = bit_unshuffle(
            group[: full * block * itemsize], block, itemsize
        )
        if full < len(members):  # the shorter last block
            out[filled + full * block * itemsize : filled + used] = bit_unshuffle(
                group[full * block * itemsize : used], members[-1], itemsize
            )
        filled += used
    leftover = size - filled
    out[filled:] = np.frombuffer(_take(raw, position, leftover, "bitshuffle"), np.uint8)
    position += leftover
    if position != len(raw):
        raise ChunkError(f"{len(raw) - position} bytes follow the last bitshuffle block")
    return out


def bit_unshuffle(shuffled: np.ndarray, count: int, itemsize: int) -> np.ndarray:
    """Undo bitshuffle's bit transpose of consecutive blocks of ``count`` elements each.

    Args:
        shuffled: uint8, a whole number of blocks of ``count * itemsize`` bytes. A block is
            ``8 * itemsize`` rows of ``count / 8`` bytes: row ``8 * b + k`` holds bit ``k`` of
            byte ``b`` of each element, element ``8 * j + i`` at bit ``i`` of the row's byte ``j``.
        count: elements per block, a multiple of 8.

    Returns:
        (len(shuffled),) uint8: the elements' bytes in order.

    For each byte ``b`` and column ``j`` the 8 row bytes form an 8 x 8 bit matrix; transposing it
    (three mask-and-shift steps on 64-bit words) yields byte ``b`` of elements ``8j .. 8j + 7``.
    """
    blocks = len(shuffled) // (count * itemsize)
    rows = shuffled.reshape(blocks, itemsize, 8, count // 8)
    words = rows.transpose(0, 1, 3, 2).copy().view("<u8")[..., 0]  # (block, b, j), byte k = row k; a copy
    swap = np.empty_like(words)  # in-place steps: one scratch array, no temporaries per step
    for shift, mask in ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0)):
        np.right_shift(words, np.uint64(shift), out=swap)
        swap ^= words
        swap &= np.uint64(mask)
        words ^= swap
        swap <<= np.uint64(shift)
        words ^= swap
    columns = words.view(np.uint8).reshape(blocks, itemsize, count)  # (block, b, element)
    if itemsize == 1:
        return columns.reshape(-1)
    out = np.empty((blocks, count, itemsize), np.uint8)
    for byte in range(itemsize):  # one strided pass per byte plane
        out[:, :, byte] = columns[:, byte]
    return out.reshape(-1)


def decode_blosc(raw: memoryview, size: int, stage: Filter, itemsize: int, out: np.ndarray | None = None) -> np.ndarray:
    """A Blosc buffer -> exactly ``size`` bytes, after its header's sizes are checked."""
    if len(raw) < 16:
        raise ChunkError(f"a blosc chunk of {len(raw)} bytes has no complete header")
    declared, stored = _le(raw, 4, 4), _le(raw, 12, 4)
    if declared != size:
        raise ChunkError(f"the blosc header declares {declared} bytes; the chunk holds {size}")
    if stored != len(raw):
        raise ChunkError(f"the blosc header declares {stored} stored bytes; the chunk has {len(raw)}")
    out = _output(out, size)
    try:
        written = _blosc.decompress_ptr(bytes(raw), out.ctypes.data)
    except (_BloscError, RuntimeError, ValueError, TypeError) as error:  # what blosc raises for corrupt buffers
        raise ChunkError(f"corrupt blosc buffer ({error})") from None
    if written != size:
        raise ChunkError(f"the blosc buffer decodes to {written} bytes; the chunk holds {size}")
    return out


def decode_lzf(raw: memoryview, size: int, stage: Filter, itemsize: int, out: np.ndarray | None = None) -> np.ndarray:
    """An LZF stream (h5py's filter) -> exactly ``size`` bytes."""
    data = bytes(raw)
    decoded = bytearray(size)  # bytearray slicing is what makes this loop fast enough
    ip = op = 0
    end = len(data)
    while ip < end:
        control = data[ip]
        ip += 1
        if control < 32:  # a literal run of control + 1 bytes
            length = control + 1
            if ip + length > end or op + length > size:
                raise ChunkError("an LZF literal runs past the end of its stream or chunk")
            decoded[op : op + length] = data[ip : ip + length]
            ip += length
            op += length
            continue
        length = control >> 5
        if length == 7:
            if ip >= end:
                raise ChunkError("the LZF stream ends inside a back reference")
            length += data[ip]
            ip += 1
        if ip >= end:
            raise ChunkError("the LZF stream ends inside a back reference")
        source = op - ((control & 0x1F) << 8) - data[ip] - 1
        ip += 1
        length += 2
        if source < 0 or op + length > size:
            raise ChunkError("an LZF back reference points outside the chunk")
        distance = op - source
        if distance >= length:
            decoded[op : op + length] = decoded[source : source + length]
        else:  # the reference overlaps what it writes: a repeating pattern
            pattern = bytes(decoded[source:op])
            decoded[op : op + length] = (pattern * (length // distance + 1))[:length]
        op += length
    if op != size:
        raise ChunkError(f"the LZF stream decodes to {op} bytes; the chunk holds {size}")
    if out is None:
        return np.frombuffer(decoded, np.uint8)
    out[:] = np.frombuffer(decoded, np.uint8)
    return out


# --- checksum -----------------------------------------------------------------------------


def strip_fletcher32(raw: memoryview) -> memoryview:
    """``raw`` without its trailing Fletcher-32 checksum, after verifying it as HDF5 does."""
    if len(raw) < 4:
        raise ChunkError(f"a fletcher32 chunk of {len(raw)} bytes has no checksum")
    data, stored = raw[:-4], _le(raw, len(raw) - 4, 4)
    checksum = fletcher32(data)
    swapped = ((checksum & 0x00FF00FF) << 8) | ((checksum >> 8) & 0x00FF00FF)  # files of HDF5 < 1.6.3
    if stored not in (checksum, swapped):
        raise ChunkError("the chunk's fletcher32 checksum does not match its data")
    return data


def fletcher32(data: memoryview) -> int:
    """HDF5's ``H5_checksum_fletcher32`` of ``data``: big-endian 16-bit words, folded every 360.

    Works through the data 360 x 256 words at a time, so its temporaries stay below 1 MiB.
    """
    sum1 = sum2 = 0
    weights = np.arange(360, 0, -1, dtype=np.uint64)
    count_words = len(data) // 2
    step = 360 * 256
    for start in range(0, count_words, step):
        words = np.frombuffer(data, ">u2", count=min(step, count_words - start), offset=2 * start).astype(np.uint64)
        full = len(words) // 360 * 360
        blocks = words[:full].reshape(-1, 360)
        sums = [(int(s), int(w), 360) for s, w in zip(blocks.sum(axis=1), blocks @ weights, strict=True)]
        if full < len(words):
            tail = words[full:]
            sums.append((int(tail.sum()), int(tail @ weights[360 - len(tail) :]), len(tail)))
        for total, weighted, count in sums:
            sum2 = (sum2 + count * sum1 + weighted) & 0xFFFFFFFF
            sum1 = (sum1 + total) & 0xFFFFFFFF
            sum1, sum2 = (sum1 & 0xFFFF) + (sum1 >> 16), (sum2 & 0xFFFF) + (sum2 >> 16)
    if len(data) % 2:
        sum1 = (sum1 + (data[-1] << 8)) & 0xFFFFFFFF
        sum2 = (sum2 + sum1) & 0xFFFFFFFF
        sum1, sum2 = (sum1 & 0xFFFF) + (sum1 >> 16), (sum2 & 0xFFFF) + (sum2 >> 16)
    sum1, sum2 = (sum1 & 0xFFFF) + (sum1 >> 16), (sum2 & 0xFFFF) + (sum2 >> 16)
    return (sum2 << 16) | sum1


# --- helpers ------------------------------------------------------------------------------


def _lz4(stored: memoryview, length: int) -> np.ndarray:
    decoded = np.empty(length, np.uint8)  # every byte written by _lz4_into, or an error
    _lz4_into(stored, decoded)
    return decoded


def _lz4_into(stored: memoryview, target: np.ndarray) -> None:
    """Decode one LZ4 block into all of ``target`` (a contiguous uint8 array), bounds-checked."""
    length = len(target)
    if _LZ4_DECOMPRESS_SAFE is not None:
        source = np.frombuffer(stored, np.uint8)
        written = _LZ4_DECOMPRESS_SAFE(source.ctypes.data, target.ctypes.data, len(source), length)
        if written != length:
            raise ChunkError(f"corrupt LZ4 block (it decodes to {written} of {length} bytes)")
        return
    try:
        decoded = _lz4_block.decompress(stored, uncompressed_size=length)
    except _lz4_block.LZ4BlockError as error:
        raise ChunkError(f"corrupt LZ4 block ({error})") from None
    if len(decoded) != length:
        raise ChunkError(f"an LZ4 block decodes to {len(decoded)} bytes; it holds {length}")
    target[:] = np.frombuffer(decoded, np.uint8)


def _zstd_block(stored: memoryview, length: int) -> np.ndarray:
    return _decode_stream(_zstd_decompressor(length), stored, length, "zstd", _zstd.ZstdError)


def _check_blocks(block: int, total: int, name: str) -> None:
    if total and block == 0:
        raise ChunkError(f"the {name} header declares blocks of 0 bytes")
    if total > block and block < MIN_BLOCK_BYTES:
        raise ChunkError(f"{name} blocks of {block} bytes are smaller than {MIN_BLOCK_BYTES}")


def _sized_block(raw: memoryview, position: int, name: str) -> tuple[memoryview, int]:
    length = _be(_take(raw, position, 4, name), 0, 4)
    return _take(raw, position + 4, length, name), position + 4 + length


def _take(raw: memoryview, position: int, length: int, name: str) -> memoryview:
    if position + length > len(raw):
        raise ChunkError(f"the {name} chunk ends {position + length - len(raw)} bytes early")
    return raw[position : position + length]


def _be(raw: memoryview, position: int, length: int) -> int:
    return int.from_bytes(raw[position : position + length], "big")


def _le(raw: memoryview, position: int, length: int) -> int:
    return int.from_bytes(raw[position : position + length], "little")


def available_compressors() -> dict[int, Decoder]:
    """The compressing filters this process can decode, by filter id."""
    decoders: dict[int, Decoder] = {FILTER_DEFLATE: decode_gzip, FILTER_BZIP2: decode_bzip2, FILTER_LZF: decode_lzf}
    if _zstd is not None:
        decoders[FILTER_ZSTD] = decode_zstd
    decoders[FILTER_BITSHUFFLE] = decode_bitshuffle  # its LZ4 / zstd modes need those libraries
    if _lz4_block is not None:
        decoders[FILTER_LZ4] = decode_lz4
    if _blosc is not None:
        decoders[FILTER_BLOSC] = decode_blosc
    return decoders


COMPRESSORS = available_compressors()
SUPPORTED_TEXT = ", ".join(FILTER_NAMES[code] for code in (FILTER_SHUFFLE, FILTER_FLETCHER32, *sorted(COMPRESSORS)))


def can_decode(stage: Filter) -> bool:
    """Whether this process has a bounded decoder for ``stage`` (with its parameters)."""
    if stage.code in (FILTER_SHUFFLE, FILTER_FLETCHER32):
        return True
    if stage.code == FILTER_BITSHUFFLE and len(stage.values) > 4:
        compression = stage.values[4]
        return (
            compression == 0
            or (compression == _BSHUF_LZ4 and _lz4_block is not None)
            or (compression == _BSHUF_ZSTD and _zstd is not None)
        )
    return stage.code in COMPRESSORS


def is_shuffled(pipeline: tuple[Filter, ...], mask: int, itemsize: int) -> bool:
    """Whether a chunk with ``mask`` still needs byte-unshuffling after :func:`unfilter_chunk`."""
    return itemsize > 1 and any(
        stage.code == FILTER_SHUFFLE and not mask >> index & 1 for index, stage in enumerate(pipeline)
    )


def unfilter_chunk(
    raw: memoryview, size: int, pipeline: tuple[Filter, ...], mask: int, itemsize: int, out: np.ndarray | None = None
):
    """The stored bytes of one chunk with every filter but shuffle undone.

    Args:
        raw: the chunk as stored in the file.
        size: the chunk's decoded size (chunk shape x itemsize).
        pipeline: the dataset's filters in write order, already validated (shuffle first if
            present, at most one compressor, fletcher32 last if present).
        mask: the chunk's filter mask (bit i set: filter i was skipped for this chunk).
        itemsize: bytes per element.
        out: a flat uint8 array of ``size`` bytes the compressor may decode into (the chunk's
            place in the frames); ``None``: it allocates its own.

    Returns:
        A bytes-like object of exactly ``size`` bytes: ``out`` when the compressor wrote there,
        a view of ``raw`` when no compressor applies, else a fresh buffer. Still byte-shuffled
        when :func:`is_shuffled`.

    Raises:
        ChunkError: the chunk does not decode to exactly ``size`` bytes.
    """
    data: memoryview | np.ndarray = raw
    for index in range(len(pipeline) - 1, -1, -1):
        stage = pipeline[index]
        if mask >> index & 1 or stage.code == FILTER_SHUFFLE:
            continue
        if stage.code == FILTER_FLETCHER32:
            data = strip_fletcher32(memoryview(data))
        else:
            data = COMPRESSORS[stage.code](memoryview(data), size, stage, itemsize, out)
    length = len(memoryview(data).cast("B"))
    if length != size:
        raise ChunkError(f"the chunk holds {length} bytes, not the declared {size}")
    return data
