"""Unsharp masking of the training target (Real-ESRGAN's `gt_usm`).

A model trained with L1 toward the true HR learns the mean of what the LR
allows, which is smooth; Real-ESRGAN sharpens its ground truth with an unsharp
mask before making the LR from it and comparing with it, so the model learns
to give edges the contrast of a sharpened photo.  Only where the detail is
above a threshold: flat areas and faint noise are left as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_1d(sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) blurred separably, along the width then the height, borders
    mirrored (the kernel cut to what a side smaller than it can mirror)."""
    k, c = gaussian_1d(sigma), img.shape[0]
    x = img[None]
    for wide in (True, False):
        pad = min(len(k) // 2, x.shape[3 if wide else 2] - 1)
        taps = k[len(k) // 2 - pad : len(k) // 2 + pad + 1]
        taps = (taps / taps.sum()).view((1, -1) if wide else (-1, 1)).expand(c, 1, -1, -1)
        x = F.conv2d(F.pad(x, (pad, pad, 0, 0) if wide else (0, 0, pad, pad), mode="reflect"), taps, groups=c)
    return x[0]


def unsharp_mask(img: torch.Tensor, sigma: float = 8.0, amount: float = 0.5, threshold: float = 10 / 255
                 ) -> torch.Tensor:
    """img + amount * (img - blur(img)), clipped to [0, 1], blended in by a
    soft mask of where |img - blur| exceeds `threshold` (as Real-ESRGAN's USM:
    a Gaussian of sigma 8, weight 0.5, threshold 10 levels)."""
    detail = img - gaussian_blur(img, sigma)
    mask = gaussian_blur((detail.abs() > threshold).float(), sigma)
    sharp = (img + amount * detail).clamp_(0, 1)
    return mask * sharp + (1 - mask) * img
