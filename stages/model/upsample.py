"""Upsamplers G: refined LR-size features -> SR image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.model.config import ModelConfig
from clipsr_cli.model.kernels import bicubic_upsample, conv_pixel_shuffle
from clipsr_cli.plugins.hookspecs import hookimpl
from stages.model.tifblock import Affine, TextReweight

# On the CPU a batch goes through the upsampler a few images at a time, so that
# its widest map (the last step's, at the output's size) stays near this many
# bytes: the maps of a whole batch at the output's size were the forward pass's
# peak (the paper preset at batch 4, x4: 148 MiB; chunked, 78), for 1-4% more
# time per image (BENCHMARKS.md, "Peak memory against the authors' generator").
CPU_CHUNK_BYTES = 32 << 20


class PixelShuffleUpsampler(nn.Module):
    """log2(scale) blocks of conv3x3 (stride 1, pad 1) + PixelShuffle(2), then a
    conv3x3 to RGB (paper §III-B4).  With `global_residual`, the network predicts
    the difference to bicubic: the same function class, but training starts
    from bicubic quality instead of from noise.

    With `text_dim` (the preset's `upsampler_text`), each upsampling step's
    output is modulated by the caption as in a TIFBlock (re-weighting, then a
    channel-wise affine before the activation): the detail a caption names
    lives at the output's resolution, where the refiner's LR-size features
    would otherwise have to encode it for a text-blind decoder.

    With `subpixel_rgb` the last x2 step's conv gives the RGB sub-pixels itself
    (ESPCN's output layer): no feature maps at the output's size, which were a
    quarter of the tiny preset's training step at x8; the tiny preset spends that
    on 32-channel steps (BENCHMARKS.md, text guidance)."""

    uses_features = True

    def __init__(self, cfg: ModelConfig, scale: int, in_channels: int, text_dim: int | None = None):
        super().__init__()
        self.scale = scale
        self.residual = cfg.generator.global_residual
        steps = int(math.log2(scale))
        self.subpixel = cfg.generator.subpixel_rgb
        feature_steps = steps - 1 if self.subpixel else steps
        width = cfg.generator.upsampler_channels or in_channels
        # one conv per x2 step; keyed 0, 3, 6, ... as the checkpoints of the first
        # version (a Sequential of conv, shuffle, activation) name them
        self.body = nn.ModuleDict({str(3 * i): nn.Conv2d(in_channels if i == 0 else width, 4 * width, 3, 1, 1)
                                   for i in range(feature_steps)})
        # the preset's further convolutions per step: empty lists in the paper's upsampler,
        # which hold no tensors, so earlier checkpoints load unchanged
        extra = cfg.generator.upsampler_convs - 1
        self.extra = nn.ModuleList(nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1) for _ in range(extra))
                                   for _ in range(feature_steps))
        self.uses_text = text_dim is not None
        if self.uses_text:
            self.reweight = TextReweight(text_dim)
            self.fuse = nn.ModuleList(Affine(text_dim, width) for _ in range(feature_steps))
            self.extra_fuse = nn.ModuleList(nn.ModuleList(Affine(text_dim, width) for _ in range(extra))
                                            for _ in range(feature_steps))
        last = width if feature_steps else in_channels
        self.to_rgb = nn.Conv2d(last, 3 * 4 if self.subpixel else 3, 3, 1, 1)
        if self.residual:  # start close to bicubic: a small correction, not noise on top of it
            with torch.no_grad():
                self.to_rgb.weight.mul_(0.1)
                self.to_rgb.bias.zero_()

    def forward(self, features: torch.Tensor, lr: torch.Tensor, sentence: torch.Tensor | None = None) -> torch.Tensor:
        text = self.reweight(sentence) if self.uses_text else None
        n = self.chunk(features)
        if n >= features.shape[0]:
            return self._upsample(features, lr, text)
        parts = [self._upsample(features[i : i + n], lr[i : i + n], None if text is None else text[i : i + n])
                 for i in range(0, features.shape[0], n)]
        return torch.cat(parts)

    def chunk(self, features: torch.Tensor) -> int:
        """Images per pass through the upsampler: all of them on an accelerator
        and in an exported graph, else as many as keep the widest map near
        CPU_CHUNK_BYTES (at least one)."""
        if features.device.type != "cpu" or torch.compiler.is_compiling():
            return features.shape[0]
        b, c, h, w = features.shape
        return max(1, CPU_CHUNK_BYTES // (self.widest_map(h, w) * features.element_size()))

    def widest_map(self, h: int, w: int) -> int:
        """Elements of one image's widest map, for features of h x w: the RGB conv's
        input or output, at the output's size (half of it with `subpixel_rgb`)."""
        side = self.scale // 2 if self.subpixel else self.scale
        return max(self.to_rgb.in_channels, self.to_rgb.out_channels) * h * w * side**2

    def _upsample(self, x: torch.Tensor, lr: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        for i, conv in enumerate(self.body.values()):
            x = conv_pixel_shuffle(x, conv, 2)
            if text is not None:
                x = self.fuse[i](x, text)
            x = F.leaky_relu_(x, 0.2)
            for j, extra in enumerate(self.extra[i]):
                h = extra(x)
                h = self.extra_fuse[i][j](h, text) if text is not None else h
                x = x + F.leaky_relu_(h, 0.2)
        # bf16 features: the image and its residual in fp32
        out = (conv_pixel_shuffle(x, self.to_rgb, 2) if self.subpixel else self.to_rgb(x)).to(lr.dtype)
        return out.add_(bicubic_upsample(lr, self.scale)) if self.residual else out


class BicubicUpsampler(nn.Module):
    """Baseline: plain bicubic interpolation; the generator skips the feature path."""

    uses_features = False

    def __init__(self, cfg: ModelConfig, scale: int, in_channels: int, text_dim: int | None = None):
        super().__init__()
        self.scale = scale

    def forward(self, features, lr: torch.Tensor, sentence: torch.Tensor | None = None) -> torch.Tensor:
        return bicubic_upsample(lr, self.scale)


@hookimpl
def register_upsamplers(register):
    register("pixelshuffle", PixelShuffleUpsampler)
    register("bicubic", BicubicUpsampler)
