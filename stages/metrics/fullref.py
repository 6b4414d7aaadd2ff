"""Full-reference metrics with BasicSR's conventions.

PSNR and SSIM are computed on the Y channel of ITU-R BT.601 YCbCr (studio
range, Y in [16, 235]) of uint8-rounded images, with `crop_border` pixels
removed from every edge; SSIM uses an 11x11 Gaussian window, sigma 1.5, valid
filtering, K1 = 0.01, K2 = 0.03 (the MATLAB reference of Wang et al.).
Images enter as float tensors (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from clipsr_cli.plugins.hookspecs import hookimpl

Y_DEFINITION = "ITU-R BT.601 Y (16-235) of uint8-rounded RGB"


def to_y(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) Y in [16, 235] (float64)."""
    rgb = torch.round(img.double().clamp(0, 1) * 255.0) / 255.0
    w = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64, device=img.device).view(1, 3, 1, 1)
    return (rgb * w).sum(dim=1, keepdim=True) + 16.0


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border:-border, border:-border] if border > 0 else x


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
    win = _gaussian_window(device=x.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.mean(dim=(1, 2, 3))


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable  # fn(sr, hr, crop_border) -> (B,) tensor
    higher_is_better: bool
    needs_reference: bool
    range: str
    description: str
    needs_captions: bool = False  # then fn(sr, captions: list[list[str]]) -> (B,)
    # set-level (FID): features(img (1,3,H,W)) -> (1, D) per image; fn(sr_features, hr_features) -> float
    features: Callable | None = None

    @property
    def set_level(self) -> bool:
        return self.features is not None

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"


@hookimpl
def register_metrics(register):
    register("psnr", Metric("psnr", psnr, True, True, "[0, inf) dB", f"PSNR on {Y_DEFINITION}"))
    register("ssim", Metric("ssim", ssim, True, True, "[-1, 1]", f"SSIM (11x11 Gaussian, sigma 1.5) on {Y_DEFINITION}"))
    from stages.metrics.niqe import niqe  # its pristine parameters are resolved on first use only

    register("niqe", Metric("niqe", niqe, False, False, "[0, inf)", "NIQE (MATLAB-compatible, 96x96 blocks) on Y"))
    from stages.metrics.lpips import lpips

    register("lpips", Metric("lpips", lpips, False, True, "[0, 1]",
                             "LPIPS v0.1, AlexNet (learned perceptual distance) on RGB"))
    from stages.metrics.fid import fid, fid_features

    register("fid", Metric("fid", fid, False, True, "[0, inf)",
                           "FID (pytorch-fid's TF Inception, pool3) of the SR set against the reference set; "
                           "one value per folder", features=fid_features))
    from stages.metrics.clip_score import clip_score

    register("clip_score", Metric("clip_score", clip_score, True, False, "[-1, 1]",
                                  "cosine of CLIP image and caption embeddings (needs --captions)", True))
