"""TIFBlock: text-image fusion by channel-wise affine modulation (paper §III-B3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TextReweight(nn.Module):
    """Softmax re-weighting of the text vector before the affine MLPs.

    The paper gives no temperature, and a softmax over a 512-d CLIP embedding of
    small magnitude is almost uniform, so the text signal would vanish.  The
    vector is first brought to unit RMS (independent of the encoder's scale),
    the softmax temperature is learned (starting at 1), and the weights are
    multiplied by the dimension so that their mean is 1 whatever D is.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        z = F.normalize(text, dim=-1) * math.sqrt(self.dim)
        return torch.softmax(z / self.log_temperature.exp(), dim=-1) * self.dim


class Affine(nn.Module):
    """gamma = MLP1(t), beta = MLP2(t); AFF(F | t) = gamma * F + beta, channel-wise.
    The last layers start at gamma = 1, beta = 0: identity modulation (DF-GAN)."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(cond_dim, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))
        self.beta = nn.Sequential(nn.Linear(cond_dim, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))
        for mlp, bias in ((self.gamma, 1.0), (self.beta, 0.0)):
            nn.init.zeros_(mlp[-1].weight)
            nn.init.constant_(mlp[-1].bias, bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta(text)[:, :, None, None], self.gamma(text)[:, :, None, None], x)


class TIFBlock(nn.Module):
    """conv -> fuse -> conv -> fuse, where fuse = affine + LeakyReLU, plus a
    shortcut (a learned 1x1 conv when channel counts differ)."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.fuse1 = Affine(cond_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.fuse2 = Affine(cond_dim, out_ch)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu_(self.fuse1(self.conv1(x), text), 0.2)  # in place: a fresh tensor
        h = F.leaky_relu_(self.fuse2(self.conv2(h), text), 0.2)
        return self.shortcut(x) + h
