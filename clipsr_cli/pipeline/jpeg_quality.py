"""The JPEG quality an image was last saved at, read from its pixels alone
(`--denoise-strength auto`, pipeline/auto_denoise.py, turns it into a strength).

A JPEG rounds each 8x8 block's DCT coefficients to multiples of a step from its
quantisation table; decoding adds only rounding noise (about 0.3 of a level), so a
decoded image's coefficients still sit on those multiples as long as it was not
resized or cropped since.  The steps of a few low frequencies, against the IJG table
that libjpeg (so PIL and most software) scales by the quality, give the quality; an
encoder with tables of its own reads as the IJG quality nearest to them.
"""

from __future__ import annotations

import numpy as np

# The IJG luminance table (JPEG standard, Annex K), its low frequencies: the steps found
# there are the reliable ones (higher frequencies are mostly quantised to zero).
_LUMA = np.array([[16, 11, 10, 16], [12, 12, 14, 19], [14, 13, 16, 24], [14, 17, 22, 29]], np.float64)
_FREQS = [(u, v) for u in range(4) for v in range(4) if 1 <= u + v <= 3]  # no DC: its step is blurred by the level shift
_MIN_FREQS = 3  # frequencies that must show a step before a quality is named
_MIN_COEFFS = 12  # coefficients off zero a step is judged on
_ON_GRID = 0.6  # mean cos(2 pi c / step) of a real step: rounding noise keeps it near 1, no step near 0
_MAX_STEP = 80  # quality 10's steps reach about 70 at these frequencies
_MAX_BLOCKS = 4096  # a spread subset of a large image's blocks: as sure, and bounded in time


def _dct_matrix(n: int = 8) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT = _dct_matrix()


def _block_coefficients(rgb: np.ndarray) -> np.ndarray:
    """(blocks, 8, 8) orthonormal DCT of the luma of the whole 8x8 blocks from the
    origin, leaving out blocks with clipped pixels (clipping moves coefficients off the grid)."""
    h, w = rgb.shape[0] // 8 * 8, rgb.shape[1] // 8 * 8
    pixels = rgb[:h, :w].astype(np.float64).reshape(h // 8, 8, w // 8, 8, 3).transpose(0, 2, 1, 3, 4)
    pixels = pixels.reshape(-1, 8, 8, 3)
    clipped = ((pixels >= 254.5) | (pixels <= 0.5)).any(axis=3).sum(axis=(1, 2)) > 6
    pixels = pixels[~clipped]
    if len(pixels) > _MAX_BLOCKS:
        pixels = pixels[np.linspace(0, len(pixels) - 1, _MAX_BLOCKS).astype(int)]
    luma = pixels @ np.array([0.299, 0.587, 0.114]) - 128  # JPEG's YCbCr
    return _DCT @ luma @ _DCT.T


def _step(coefficients: np.ndarray) -> int:
    """The largest quantisation step the coefficients sit on the multiples of (0: none).
    A step's divisors fit too, its multiples do not, hence the largest."""
    found, magnitude = 0, np.abs(coefficients)
    for step in range(2, _MAX_STEP):
        off_zero = coefficients[magnitude > step / 2]
        if len(off_zero) < _MIN_COEFFS:
            break
        if np.cos(2 * np.pi * off_zero / step).mean() > _ON_GRID:
            found = step
    return found


def jpeg_quality(rgb: np.ndarray) -> int | None:
    """(H, W, 3) uint8 -> the IJG quality (1-100) the pixels were last saved at as a
    JPEG; None where they show no JPEG grid: never a JPEG, resized or cropped since,
    too small, or saved at a quality so high (about 95) that its steps are 1."""
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 16:
        return None
    coefficients = _block_coefficients(rgb)
    scales = []  # IJG's percentage scaling of the base table, from each step found
    for u, v in _FREQS:
        step = _step(coefficients[:, u, v])
        if step:
            scales.append(100 * step / _LUMA[u, v])
    if len(scales) < _MIN_FREQS:
        return None
    scale = float(np.median(scales))
    quality = (200 - scale) / 2 if scale <= 100 else 5000 / scale  # libjpeg's jpeg_quality_scaling, inverted
    return int(np.clip(round(quality), 1, 100))
