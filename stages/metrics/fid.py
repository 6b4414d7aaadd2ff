"""FID (Heusel et al. 2017) with the Inception network of the TensorFlow
reference, as pytorch-fid ports it: torchvision's Inception v3 layout with the
four block variants of the TF graph (average pools that exclude padding, a
max pool in the last block), 1008 classes, weights `pt_inception-2015-12-05`.
Inputs: bilinear resize to 299x299, scaled to [-1, 1]; features: the 2048-d
pool3 output.  A set-level metric: one value for the whole folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE


class _PoolNoPadA(InceptionA):
    def _forward(self, x):
        pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        return [self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), pool]


class _PoolNoPadC(InceptionC):
    def _forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        return [self.branch1x1(x), b7, d, pool]


class _FIDInceptionE(InceptionE):
    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool  # the TF graph's last block pools by max

    def _forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        return [self.branch1x1(x), b3, d, self.branch_pool(pooled)]


def fid_inception() -> Inception3:
    net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = _PoolNoPadA(192, 32), _PoolNoPadA(256, 64), _PoolNoPadA(288, 64)
    net.Mixed_6b = _PoolNoPadC(768, 128)
    net.Mixed_6c, net.Mixed_6d = _PoolNoPadC(768, 160), _PoolNoPadC(768, 160)
    net.Mixed_6e = _PoolNoPadC(768, 192)
    net.Mixed_7b, net.Mixed_7c = _FIDInceptionE(1280, max_pool=False), _FIDInceptionE(2048, max_pool=True)
    return net


class FIDFeatures(nn.Module):
    """Images in [0, 1] -> (B, 2048) pool3 features."""

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        self.net = fid_inception()
        if weights_path is not None:
            state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
            self.net.load_state_dict(state, strict=True)
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = F.interpolate(img.float(), size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1, n.Conv2d_3b_1x1,
                      n.Conv2d_4a_3x3, n.maxpool2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b,
                      n.Mixed_6c, n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = layer(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^1/2) of two feature sets (rows).

    With centred X_a, X_b: tr((C_a C_b)^1/2) is the nuclear norm of X_a X_b^T
    over sqrt((n_a - 1)(n_b - 1)) (the non-zero eigenvalues of C_a C_b are the
    squared singular values of X_a X_b^T / ...), an n_a x n_b problem: exact,
    and instant for the small folders SR benchmarks have.  With more images than
    dimensions, the d x d route: tr((S C_b S)^1/2), S = C_a^1/2.  No scipy."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 images on each side")
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu = a.mean(0) - b.mean(0)
    xa, xb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    traces = (xa * xa).sum() / na + (xb * xb).sum() / nb
    if min(len(a), len(b)) <= a.shape[1]:
        cross = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt(na * nb)
    else:
        w, v = np.linalg.eigh(xa.T @ xa / na)
        s = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(s @ (xb.T @ xb / nb) @ s), 0, None)).sum()
    return float(mu @ mu + traces - 2 * cross)


@functools.lru_cache(maxsize=2)
def _features(weights_dir: str | None = None) -> FIDFeatures:
    from clipsr_cli.model.weights import resolve

    return FIDFeatures(resolve("fid-inception", weights_dir=weights_dir))


def fid_features(img: torch.Tensor) -> torch.Tensor:
    return _features()(img)


def fid(sr_features: list[torch.Tensor], hr_features: list[torch.Tensor]) -> float:
    def rows(features: list[torch.Tensor]) -> np.ndarray:  # none when no image could be scored
        return torch.cat(features).double().numpy() if features else np.empty((0, 0))

    return frechet_distance(rows(sr_features), rows(hr_features))
