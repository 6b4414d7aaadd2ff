"""Full-reference metrics with BasicSR's conventions (`convention.py`): PSNR and
SSIM on the Y channel of uint8-rounded images, `crop_border` pixels removed
from every edge; SSIM uses an 11x11 Gaussian window, sigma 1.5, valid
filtering, K1 = 0.01, K2 = 0.03 (the MATLAB reference of Wang et al.).
Images enter as float tensors (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipsr_cli.plugins.conventions import crop_border as _crop
from clipsr_cli.plugins.conventions import to_y


def psnr(sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0) -> torch.Tensor:
    mse = (_crop(to_y(sr), crop_border) - _crop(to_y(hr), crop_border)).square().mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0**2 / mse)  # inf for identical images, as BasicSR


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0) -> torch.Tensor:
    x, y = _crop(to_y(sr), crop_border), _crop(to_y(hr), crop_border)
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after the crop border ({crop_border}), "
                         f"this image leaves {x.shape[-1]}x{x.shape[-2]}")
    win = _gaussian_window(device=x.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.mean(dim=(1, 2, 3))
