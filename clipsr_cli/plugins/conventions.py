"""The conventions every metric follows (part of the metric contract), as
BasicSR defines them: the Y channel of ITU-R BT.601 YCbCr (studio range, Y in
[16, 235]) of uint8-rounded images, and `crop_border` pixels removed from every
edge before scoring."""

from __future__ import annotations

import torch

Y_DEFINITION = "ITU-R BT.601 Y (16-235) of uint8-rounded RGB"


def to_y(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) Y in [16, 235] (float64)."""
    rgb = torch.round(img.double().clamp(0, 1) * 255.0) / 255.0
    w = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64, device=img.device).view(1, 3, 1, 1)
    return (rgb * w).sum(dim=1, keepdim=True) + 16.0


def crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    """`border` pixels off each edge of (..., H, W)."""
    return x[..., border:-border, border:-border] if border > 0 else x
