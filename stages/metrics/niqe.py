"""NIQE (Mittal et al., "Making a completely blind image quality analyzer"),
following the official MATLAB code as BasicSR re-implements it: Y channel
rounded to integers, 96x96 blocks without overlap, two scales (the second by
MATLAB's antialiased bicubic imresize at 0.5), the pristine parameters from the
weights manifest.  All blocks of an image are processed as one batch.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from clipsr_cli.plugins.conventions import crop_border as _crop
from clipsr_cli.plugins.conventions import to_y

BLOCK = 96
_GAM = torch.arange(0.2, 10.001, 0.001, dtype=torch.float64)


def _gamma(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.lgamma(x))


_R_GAM = _gamma(2 / _GAM) ** 2 / (_gamma(1 / _GAM) * _gamma(3 / _GAM))


@functools.lru_cache(maxsize=4)
def pristine_params(weights_dir: str | None = None):
    from clipsr_cli.model.weights import resolve

    data = np.load(resolve("niqe-pris-params", weights_dir=weights_dir))
    return (torch.from_numpy(data["mu_pris_param"]).double(), torch.from_numpy(data["cov_pris_param"]).double(),
            torch.from_numpy(data["gaussian_window"]).double())


def _cubic(x: torch.Tensor) -> torch.Tensor:
    a = x.abs()
    return ((1.5 * a**3 - 2.5 * a**2 + 1) * (a <= 1)
            + (-0.5 * a**3 + 2.5 * a**2 - 4 * a + 2) * ((a > 1) & (a <= 2)))


def _imresize_matrix(in_len: int, scale: float) -> torch.Tensor:
    """(out, in) matrix of MATLAB's antialiased bicubic resize, symmetric borders."""
    out_len = math.ceil(in_len * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    idx = idx.long() - 1  # 0-based, then mirror out-of-range taps (MATLAB 'symmetric')
    idx = torch.where(idx < 0, -idx - 1, idx)
    idx = torch.where(idx >= in_len, 2 * in_len - idx - 1, idx)
    m = torch.zeros(out_len, in_len, dtype=torch.float64)
    m.scatter_add_(1, idx, w)
    return m


def imresize_half(img: torch.Tensor) -> torch.Tensor:
    h, w = img.shape
    return _imresize_matrix(h, 0.5) @ img @ _imresize_matrix(w, 0.5).T


def _aggd(x: torch.Tensor):
    """Asymmetric generalised Gaussian fit per row of x (N, M): alpha, beta_l, beta_r."""
    neg, pos = x < 0, x > 0
    left = torch.sqrt((x**2 * neg).sum(1) / neg.sum(1))
    right = torch.sqrt((x**2 * pos).sum(1) / pos.sum(1))
    gammahat = left / right
    rhat = x.abs().mean(1) ** 2 / (x**2).mean(1)
    rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    alpha = _GAM[torch.argmin((_R_GAM[None] - rhatnorm[:, None]) ** 2, dim=1)]
    k = torch.sqrt(_gamma(1 / alpha) / _gamma(3 / alpha))
    return alpha, left * k, right * k


def _block_features(blocks: torch.Tensor) -> torch.Tensor:
    """18 NIQE features per block; blocks (N, b, b)."""
    n = blocks.shape[0]
    alpha, bl, br = _aggd(blocks.reshape(n, -1))
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        prod = blocks * torch.roll(blocks, shifts=shift, dims=(1, 2))
        alpha, bl, br = _aggd(prod.reshape(n, -1))
        mean = (br - bl) * (_gamma(2 / alpha) / _gamma(1 / alpha))
        feats += [alpha, mean, bl, br]
    return torch.stack(feats, dim=1)


def _local_normalise(img: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(img - mu) / (sigma + 1) with a Gaussian window, 'nearest' borders.
    The window is separable (outer product of its row sums), so two 1-D passes
    over [img, img^2] in one batch replace a 7x7 convolution."""
    pad = window.shape[-1] // 2
    g = window.sum(dim=1)
    x = torch.stack([img, img * img])[:, None]
    x = F.pad(x, (pad,) * 4, mode="replicate")
    if torch.allclose(torch.outer(g, g), window, atol=1e-12):
        x = F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))
    else:
        x = F.conv2d(x, window[None, None])
    mu, mu_sq = x[0, 0], x[1, 0]
    sigma = torch.sqrt((mu_sq - mu * mu).abs())
    return (img - mu) / (sigma + 1)


def niqe_y(y: torch.Tensor, mu_p, cov_p, window) -> float:
    """NIQE of one rounded Y image (H, W) in [0, 255], float64."""
    nh, nw = y.shape[0] // BLOCK, y.shape[1] // BLOCK
    if nh * nw < 2:  # the distortion covariance needs at least two blocks
        raise ValueError(f"NIQE needs two {BLOCK}x{BLOCK} blocks (at least {2 * BLOCK}x{BLOCK} pixels), "
                         f"got {y.shape[1]}x{y.shape[0]}")
    img = y[: nh * BLOCK, : nw * BLOCK]
    feats = []
    for scale in (1, 2):
        b = BLOCK // scale
        norm = _local_normalise(img, window)
        # blocks in MATLAB's column-major order (all rows of a column first)
        blocks = norm.reshape(nh, b, nw, b).permute(2, 0, 1, 3).reshape(-1, b, b)
        feats.append(_block_features(blocks))
        if scale == 1:
            img = imresize_half(img / 255.0) * 255.0
    dist = torch.cat(feats, dim=1)
    mu_d = torch.nanmean(dist, dim=0, keepdim=True)
    clean = dist[~torch.isnan(dist).any(dim=1)]
    if clean.shape[0] < 2:
        raise ValueError("NIQE: too few valid blocks (flat image?)")
    cov_d = torch.cov(clean.T)
    diff = mu_p - mu_d
    inv = torch.linalg.pinv((cov_p + cov_d) / 2)
    return float(torch.sqrt(diff @ inv @ diff.T))


def niqe(sr: torch.Tensor, crop_border: int = 0) -> torch.Tensor:
    """NIQE of each image of a (B, 3, H, W) batch in [0, 1]; lower is better."""
    mu_p, cov_p, window = pristine_params()
    y = _crop(to_y(sr)[:, 0].round(), crop_border)
    return torch.tensor([niqe_y(img, mu_p, cov_p, window) for img in y], dtype=torch.float64)
