"""PNG writing for upscale outputs, and lossless reading of 16-bit RGB(A) PNGs.

Writing: Pillow's PNG encoder tries all five row filters on every row and
deflates with zlib: 5.6 ms for a 256x256 output, half of the tiny preset's
forward pass.  Here every row gets the 'Up' filter (one numpy subtraction for
the whole image) and ISA-L's deflate (`isal`, zlib where it is missing) at
level 1, its CRC-32 too, and each chunk written in pieces (`os.writev`), never
joined: 0.6-0.8 ms written to disk, files within 8% of Pillow's at level 1
(BENCHMARKS.md).
Paeth would make them 6% smaller for 5x the time.  It also writes 16-bit
RGB(A), which Pillow cannot.

Reading: Pillow decodes 16-bit RGB(A) PNGs to 8 bits, keeping each sample's
high byte.  Its little-endian unpacker, handed the same big-endian rows, keeps
the low byte instead; decoding twice gives both halves, each unfiltered by
Pillow's own decoder.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

try:  # ISA-L's deflate: same format, several times faster at low levels
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - platforms without an isal wheel
    _deflate = zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: L, LA, RGB, RGBA
UP = 2  # PNG filter type
ONE_SHOT_BYTES = 64 << 20  # larger images are filtered and deflated in blocks of rows
ROWS_PER_BLOCK = 256
WRITE_BYTES = 8 << 20  # written as they come once this much is pending


_crc32 = getattr(_deflate, "crc32", zlib.crc32)  # ISA-L's: 16x faster than zlib's on an IDAT


def _chunk(kind: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """A PNG chunk as (length + type, data, CRC): written as they are, the
    data is never copied (joining them cost 140 us per 256x256 output)."""
    return struct.pack(">I", len(data)) + kind, data, struct.pack(">I", _crc32(data, _crc32(kind)))


def up_filter(rows: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """'Up'-filtered scanlines (each byte minus the byte above it, modulo 256),
    each prefixed with its filter type byte.  rows: (n, row_bytes) uint8;
    prior: the scanline above the first row (zeros at the top of the image)."""
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = UP
    np.subtract(rows[0], prior, out=out[0, 1:])  # uint8 arithmetic wraps
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # no shifted copy of the rows
    return out


def encode_png(arr: np.ndarray, level: int = 1, text: dict[str, str] | None = None):
    """Yield the pieces of a PNG holding arr, in order, each a tuple of byte
    strings (the signature, then each chunk's): arr (H, W) or (H, W, C), C in
    1-4, uint8 or uint16; `text` as tEXt chunks (Latin-1 keyword -> text).
    Large images come in several IDAT chunks, so a writer holds one block's
    compressed data at a time."""
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    if c not in COLOR_TYPES or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"cannot write a PNG from a {arr.dtype} array with {c} channels")
    depth = 8 * arr.dtype.itemsize
    rows = np.ascontiguousarray(arr.astype(">u2") if depth == 16 else arr).view(np.uint8).reshape(h, -1)
    yield (SIGNATURE,)
    yield _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, COLOR_TYPES[c], 0, 0, 0))
    for keyword, value in (text or {}).items():
        yield _chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + value.encode("latin-1"))
    if rows.nbytes <= ONE_SHOT_BYTES:  # one call: fastest, and releases the GIL throughout
        yield _chunk(b"IDAT", _deflate.compress(up_filter(rows, np.zeros_like(rows[0])), level))
    else:  # a stream of blocks: memory bounded for very large outputs
        packer = _deflate.compressobj(level)
        prior = np.zeros_like(rows[0])
        for start in range(0, h, ROWS_PER_BLOCK):
            block = rows[start : start + ROWS_PER_BLOCK]
            data = packer.compress(up_filter(block, prior))
            prior = block[-1]
            if data:
                yield _chunk(b"IDAT", data)
        yield _chunk(b"IDAT", packer.flush())
    yield _chunk(b"IEND", b"")


def write_png(path: str | Path, arr: np.ndarray, text: dict[str, str] | None = None) -> None:
    # os-level calls: Python's buffered file adds a third to the time of
    # creating and writing a 100 kB file on this machine
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        pending, size = [], 0  # one writev for a small image (it was 5: 4 more system calls per output)
        for piece in encode_png(arr, text=text):
            pending += piece
            size += sum(map(len, piece))
            if size >= WRITE_BYTES:  # a large one in parts: its compressed blocks are not all held
                _write_all(fd, pending)
                pending, size = [], 0
        _write_all(fd, pending)
    finally:
        os.close(fd)


def _write_all(fd: int, parts) -> None:
    """Write the byte strings in order: in one writev where the OS has it,
    resumed where a write stops short."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.writev(fd, views[:1024]) if hasattr(os, "writev") else os.write(fd, views[0])
        while written:  # drop what went out (never more than the views hold)
            taken = min(written, len(views[0]))
            written -= taken
            views[0] = views[0][taken:]
            if not views[0]:
                views.pop(0)


_LOW_BYTE = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def is_png16_color(im: Image.Image) -> bool:
    """A 16-bit RGB or RGBA PNG, which Pillow would reduce to 8 bits."""
    return im.format == "PNG" and len(im.tile) == 1 and im.tile[0].args in _LOW_BYTE


def png16_bytes(path: Path) -> tuple[Image.Image, Image.Image]:
    """(high bytes, low bytes) of a 16-bit RGB(A) PNG as two 8-bit images of its mode."""
    with Image.open(path) as high:
        high.load()
    with Image.open(path) as low:
        low.tile = [t._replace(args=_LOW_BYTE[t.args]) for t in low.tile]
        low.load()
    return high, low
