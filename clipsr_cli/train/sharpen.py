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
    """(C, H, W) blurred separably, borders mirrored (clamped to the image's size)."""
    k = gaussian_1d(sigma)
    c, h, w = img.shape
    x = img[None]
    pad_w, pad_h = min(len(k) // 2, w - 1), min(len(k) // 2, h - 1)
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect")
    kw = k[len(k) // 2 - pad_w : len(k) // 2 + pad_w + 1]
    x = F.conv2d(x, (kw / kw.sum()).view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect")
    kh = k[len(k) // 2 - pad_h : len(k) // 2 + pad_h + 1]
    return F.conv2d(x, (kh / kh.sum()).view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def unsharp_mask(img: torch.Tensor, sigma: float = 8.0, amount: float = 0.5, threshold: float = 10 / 255
                 ) -> torch.Tensor:
    """img + amount * (img - blur(img)), clipped to [0, 1], blended in by a
    soft mask of where |img - blur| exceeds `threshold` (Real-ESRGAN's USM:
    a 51-tap Gaussian, sigma 8, weight 0.5, threshold 10 levels)."""
    detail = img - gaussian_blur(img, sigma)
    mask = gaussian_blur((detail.abs() > threshold).float(), sigma)
    sharp = (img + amount * detail).clamp_(0, 1)
    return mask * sharp + (1 - mask) * img
