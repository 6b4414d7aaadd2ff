"""Image encoder + TIFBlock fusion + CLIP-ViT + iterative refinement (paper §III-B).

LR -> E_I (stride-2 convs down to the grid, maps kept) -> TIFBlock fusion ->
frozen CLIP-ViT with predicted deep prompts -> `iterations` Conv-TIFBlocks that
climb back to LR resolution, each adding the encoder map of its level
(the residual links) and fusing the text again.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.model.clip import PromptedViT, clip_widths
from clipsr_cli.model.config import ConfigError, ModelConfig
from clipsr_cli.plugins.hookspecs import hookimpl
from clipsr_cli.plugins.protocols import TextCondition
from stages.model.tifblock import TextReweight, TIFBlock


def encoder_depth(cfg: ModelConfig, scale: int) -> int:
    """Stride-2 steps that bring a training-size LR (hr_crop / scale) to the grid:
    64 px -> 3, 32 px -> 2, 16 px -> 1 for the paper's 256 px crops."""
    g = cfg.generator
    ratio = g.hr_crop / scale / g.grid
    depth = round(math.log2(ratio)) if ratio >= 1 else -1
    if depth < 0 or 2**depth != ratio:
        raise ConfigError(f"preset {cfg.name!r}: hr_crop/scale/grid = {ratio} at x{scale} is not a power of two")
    if depth > g.iterations:
        raise ConfigError(f"preset {cfg.name!r}: x{scale} needs {depth} upward steps but iterations = {g.iterations}")
    return depth


class ImageEncoder(nn.Module):
    def __init__(self, channels: list[int]):
        super().__init__()
        self.stem = nn.Conv2d(3, channels[0], 3, 1, 1)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(channels, channels[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = [F.leaky_relu(self.stem(x), 0.2)]
        for conv in self.down:
            maps.append(F.leaky_relu(conv(maps[-1]), 0.2))
        return maps


class ClipViTMapper(nn.Module):
    """Feature map -> CLIP-ViT tokens (1x1 projection) -> prompted frozen ViT -> feature map."""

    def __init__(self, clip: nn.Module, channels: int, prompt_blocks: tuple[int, ...]):
        super().__init__()
        width = clip_widths(clip)["vision"]
        self.proj_in = nn.Conv2d(channels, width, 1)
        self.vit = PromptedViT(clip, prompt_blocks)
        self.proj_out = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = self.proj_in(x).flatten(2).transpose(1, 2)
        tokens = self.vit(tokens, (h, w), prompts)
        return self.proj_out(tokens.transpose(1, 2).reshape(b, -1, h, w))


class TIFRefiner(nn.Module):
    def __init__(self, cfg: ModelConfig, clip: nn.Module, scale: int):
        super().__init__()
        g = cfg.generator
        depth = encoder_depth(cfg, scale)
        widths = clip_widths(clip)
        blocks = g.prompted_blocks
        if cfg.stages.clip_vit and blocks and max(blocks) >= widths["vision_layers"]:
            raise ConfigError(f"preset {cfg.name!r}: prompts before ViT blocks {list(blocks)} but the ViT has "
                              f"{widths['vision_layers']} blocks (0 to {widths['vision_layers'] - 1})")
        ch = [min(g.base_channels * 2**level, g.max_channels) for level in range(depth + 1)]
        cond = widths["embed"]
        self.multiple = 2**depth  # input sides must be multiples of this
        self.out_channels = ch[0]
        self.encoder = ImageEncoder(ch)
        self.reweight = TextReweight(cond)
        # ablation "prompts only": the TIFBlocks see a learned constant, not the caption
        self.constant_text = None if g.affine_text else nn.Parameter(torch.randn(cond) * 0.02)
        self.fuse_in = TIFBlock(ch[-1], ch[-1], cond)
        self.vit = ClipViTMapper(clip, ch[-1], blocks) if cfg.stages.clip_vit else None
        self.levels = [max(depth - 1 - i, 0) for i in range(g.iterations)]
        inputs = [depth] + self.levels[:-1]
        self.blocks = nn.ModuleList(TIFBlock(ch[a], ch[b], cond) for a, b in zip(inputs, self.levels))

    def forward(self, lr: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        maps = self.encoder(lr)
        sentence = cond.sentence if self.constant_text is None else self.constant_text.expand_as(cond.sentence)
        text = self.reweight(sentence)
        x = self.fuse_in(maps[-1], text)
        if self.vit is not None:
            x = self.vit(x, cond.prompts)
        x = x + maps[-1]
        for level, block in zip(self.levels, self.blocks):
            skip = maps[level]
            if x.shape[-2:] != skip.shape[-2:] or torch.compiler.is_compiling():  # export: no shape branch
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(x, text) + skip
        return x


@hookimpl
def register_refiners(register):
    register("tifblock", TIFRefiner)
