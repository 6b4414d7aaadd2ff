"""A texture critic trained from scratch: a U-Net of spectrally normalised
convolutions giving one real/fake logit per pixel (Real-ESRGAN's discriminator,
Wang et al. 2021, §3.3).

The CLIP-based discriminator (`discriminator.py`) judges whether an image fits
its caption, from the frozen CLIP's view of a resized image: it cannot see the
pixel-level texture that a denoising model smooths away.  This one sees the
image at full size and needs no pretrained weights, so it trains offline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2 if stride == 1 else 1, bias=False))


class UNetDiscriminator(nn.Module):
    """Three stride-2 steps down (channels c, 2c, 4c, 8c), three bilinear steps
    back up with skip connections, two convolutions at full size, a 1-channel
    head: (B, 3, H, W) in [0, 1] -> (B, 1, H, W) logits.  H and W multiples of 8."""

    def __init__(self, channels: int = 64):
        super().__init__()
        c = channels
        self.stem = nn.Conv2d(3, c, 3, 1, 1)
        self.down = nn.ModuleList([_conv(c, 2 * c, 4, 2), _conv(2 * c, 4 * c, 4, 2), _conv(4 * c, 8 * c, 4, 2)])
        self.up = nn.ModuleList([_conv(8 * c, 4 * c, 3), _conv(4 * c, 2 * c, 3), _conv(2 * c, c, 3)])
        self.tail = nn.Sequential(_conv(c, c, 3), nn.LeakyReLU(0.2, True), _conv(c, c, 3), nn.LeakyReLU(0.2, True),
                                  nn.Conv2d(c, 1, 3, 1, 1))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.stem(img * 2 - 1), 0.2)
        skips = [x]
        for conv in self.down:
            x = F.leaky_relu(conv(x), 0.2)
            skips.append(x)
        skips.pop()  # the deepest map is x itself
        for conv in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = F.leaky_relu(conv(x), 0.2) + skips.pop()
        return self.tail(x)

