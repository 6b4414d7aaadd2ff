"""Tiled inference for images too large for one forward pass.

The LR image stays on the CPU; tiles (with `pad` LR pixels of overlap on every
interior side) go to the device one at a time and their outputs are blended
into a CPU canvas with weights that ramp linearly across each overlap, so
neighbouring tiles fade into each other instead of meeting at a seam.  Peak
device memory is set by the tile, not by the image.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

AUTO_TILES = (1024, 768, 512, 384, 256, 192, 128, 96, 64)


def _ramp(length: int, fade_in: int, fade_out: int) -> torch.Tensor:
    """1 in the middle, rising over `fade_in` and falling over `fade_out` samples."""
    w = torch.ones(length)
    if fade_in:
        w[:fade_in] = torch.arange(1, fade_in + 1) / (fade_in + 1)
    if fade_out:
        w[length - fade_out :] = torch.minimum(w[length - fade_out :], torch.arange(fade_out, 0, -1) / (fade_out + 1))
    return w


def _spans(size: int, tile: int, pad: int) -> list[tuple[int, int]]:
    """[start, end) of each padded tile along one side."""
    starts = range(0, size, tile)
    return [(max(0, s - pad), min(size, s + tile + pad)) for s in starts]


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor, scale: int, tile: int,
          pad: int, finish: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
    """fn over tiles of lr (B, C, H, W, CPU) -> (B, C', sH, sW) on the CPU.

    Overlaps are blended by ramps, each tile's mask being a row ramp times a
    column ramp.  The tiles form a grid, so the masks' sum at a pixel is the
    sum of the row ramps there times the sum of the column ramps: each ramp
    is divided by its side's sum up front, and the canvas holds the blended
    image as it fills, with no weight map (a third of an RGB canvas's size)
    and no final division.

    `finish`: instead of a float canvas of the whole image, only the band of
    rows that tiles still reach is kept in float; each band of rows no later
    tile reaches goes through finish(band, first row) (B, C', rows, sW) ->
    (B, rows, sW, C'') (quantising it: a quarter of the float's bytes or
    less) into the returned (B, sH, sW, C'') tensor.  The band is finish's to
    overwrite."""
    b, _, h, w = lr.shape
    rows, cols = _blend_ramps(h, tile, pad, scale), _blend_ramps(w, tile, pad, scale)
    canvas = out = None
    top = 0  # first canvas row held: 0 for a whole canvas, else the first row not yet finished
    for i, ((y0, y1), wy) in enumerate(rows):
        for (x0, x1), wx in cols:
            part = fn(lr[..., y0:y1, x0:x1]).float().cpu()
            if canvas is None:
                held = h * scale if finish is None else max(s1 - s0 for (s0, s1), _ in rows) * scale
                canvas = torch.zeros(b, part.shape[1], held, w * scale)
            canvas[..., y0 * scale - top : y1 * scale - top, x0 * scale : x1 * scale] += \
                part * (wy[:, None] * wx[None, :])
        if finish is not None:  # rows above the next span's start are final
            done = (rows[i + 1][0][0] if i + 1 < len(rows) else h) * scale
            band = finish(canvas[:, :, : done - top], top)
            if out is None:
                out = torch.empty(b, h * scale, w * scale, band.shape[-1], dtype=band.dtype)
            out[:, top:done] = band
            kept = y1 * scale - done  # rows the next span adds to: moved to the top
            canvas[:, :, :kept] = canvas[:, :, done - top : y1 * scale - top].clone()
            canvas[:, :, kept:] = 0
            top = done
    return canvas if finish is None else out


def _blend_ramps(size: int, tile: int, pad: int, scale: int) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """((start, end) in LR pixels, its SR-pixel ramp divided by the sum of
    every span's ramp there) for each padded tile span along one side."""
    spans = _spans(size, tile, pad)
    ramps = [_ramp((s1 - s0) * scale, scale * (pad if s0 > 0 else 0), scale * (pad if s1 < size else 0))
             for s0, s1 in spans]
    total = torch.zeros(size * scale)
    for (s0, s1), ramp in zip(spans, ramps):
        total[s0 * scale : s1 * scale] += ramp
    return [((s0, s1), ramp / total[s0 * scale : s1 * scale]) for (s0, s1), ramp in zip(spans, ramps)]


MEMINFO = "/proc/meminfo"  # Linux's account of free memory
UNKNOWN_FREE_MEMORY = 4 << 30  # where the system does not say: a guess that errs small (OOM retries cover it)


def available_memory(device: torch.device) -> int:
    """Bytes free for activations on `device`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":  # unified memory: what Metal recommends, less what it holds already
        try:
            return max(0, int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()))
        except (AttributeError, RuntimeError):  # an older torch
            pass
    return host_available_memory()


def host_available_memory() -> int:
    """Bytes of host memory free: MemAvailable on Linux; elsewhere the free
    pages where the system counts them, else half the physical memory (macOS
    has no count of free pages in sysconf, Windows no sysconf at all)."""
    try:
        with open(MEMINFO) as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    for pages, share in (("SC_AVPHYS_PAGES", 1.0), ("SC_PHYS_PAGES", 0.5)):
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf(pages) * share)
        except (AttributeError, ValueError, OSError):
            continue
    return UNKNOWN_FREE_MEMORY


HOST_CHECK_FROM_BYTES = 1 << 30  # smaller outputs are not checked: no read of free memory per image


def output_host_bytes(height: int, width: int, alpha: bool, bits: int, band_rows: int | None = None) -> int:
    """Host memory one output holds from the network to its file (the
    network's activations aside: the tile bounds them): the float canvas (3
    channels, and the upscaled alpha beside it), the float copy that joins
    alpha on, the integer image and at most a copy of it in the encoder
    (Pillow's for JPEG and WebP; PNG's filtered rows, in blocks when large).
    `band_rows`: the output is made band by band as its tiles finish
    (`tiled`'s finish), the canvas and the joining copy holding this many rows."""
    channels = 4 if alpha else 3
    integers = 2 * channels * bits // 8
    joined = channels if alpha else 0
    if band_rows is not None:
        return height * width * (integers + 4 * (channels - 3)) + band_rows * width * 4 * (3 + joined)
    return height * width * (integers + 4 * (channels + joined))


def host_memory_shortfall(need: int) -> tuple[int, int] | None:
    """(need, bytes free) when `need` bytes cannot fit in the host's free
    memory (the process would be killed for memory, ending the run), else None."""
    if need < HOST_CHECK_FROM_BYTES:
        return None
    free = host_available_memory()
    return (need, free) if need > free else None


CPU_MAX_TILE = 256  # larger tiles are no faster on a CPU, only bigger (BENCHMARKS.md)


def auto_tile(bytes_per_lr_pixel: float, device: torch.device, fraction: float = 0.4) -> int:
    """The largest standard tile whose activations fit in `fraction` of free
    memory; on a CPU at most CPU_MAX_TILE (1024x1024 at x8: 16 s and 3.5 GiB
    with 256 px tiles, 33 s and 5.3 GiB with 512: caches, not memory, set the pace)."""
    budget = available_memory(device) * fraction
    largest = CPU_MAX_TILE if device.type == "cpu" else AUTO_TILES[0]
    for t in AUTO_TILES:
        if t <= largest and t * t * bytes_per_lr_pixel <= budget:
            return t
    return AUTO_TILES[-1]


AUTO_BATCH_MAX = 64  # H100, tiny x4: batch 64 ran the forward 3x faster than batch 16 (BENCHMARKS.md)
CPU_AUTO_BATCH_MAX = 8  # 2-core CPU: batch 8 ran 1.6-1.7x faster per image than 1; 16 little more (BENCHMARKS.md)
BATCH_OUTPUT_BYTES = 512 << 20  # host memory for one batch's float outputs (a few batches are in flight)


def auto_batch(bytes_per_lr_pixel: float, lr_pixels: int, scale: int, device: torch.device,
               fraction: float = 0.4) -> int:
    """Same-size images per forward pass when --batch-size is unset: as many as
    fit in `fraction` of free memory (split between the CPU's two lanes) and
    whose float outputs fit in BATCH_OUTPUT_BYTES on the host, up to
    CPU_AUTO_BATCH_MAX on a CPU and AUTO_BATCH_MAX on an accelerator, where
    small images leave the device waiting on kernel launches, not computing."""
    cpu = device.type == "cpu"
    fits_device = available_memory(device) * (fraction / 2 if cpu else fraction) // (bytes_per_lr_pixel * lr_pixels)
    fits_host = BATCH_OUTPUT_BYTES // (3 * 4 * scale**2 * lr_pixels)
    return int(max(1, min(CPU_AUTO_BATCH_MAX if cpu else AUTO_BATCH_MAX, fits_device, fits_host)))


def is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
