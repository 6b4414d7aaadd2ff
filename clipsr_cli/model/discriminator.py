"""The CLIP-based discriminator (GALIP): frozen CLIP image features + NetD + NetC."""

from __future__ import annotations

import torch
from torch import nn

from clipsr_cli.model.clip import clip_preprocess, clip_widths, preprocess_cfg, vit_tokens
from clipsr_cli.model.config import ConfigError, ModelConfig


class ClipImageFeatures(nn.Module):
    """Intermediate token maps of chosen ViT blocks (B, W, g, g) and the image
    embedding (B, E), from one pass.  Frozen weights; gradients flow to the image."""

    def __init__(self, clip: nn.Module, blocks: tuple[int, ...]):
        super().__init__()
        self.visual = clip.visual
        w = clip_widths(clip)
        if max(blocks) >= w["vision_layers"]:
            raise ConfigError(f"discriminator blocks {blocks} exceed the ViT's {w['vision_layers']} blocks")
        self.blocks = tuple(blocks)
        self.preprocess = preprocess_cfg(clip)

    def forward(self, img: torch.Tensor):
        v = self.visual
        x = v.conv1(clip_preprocess(img, self.preprocess))
        b, c, gh, gw = x.shape
        x, taps = vit_tokens(v, x.flatten(2).transpose(1, 2), (gh, gw), taps=self.blocks)
        maps = [t.transpose(1, 2).reshape(b, c, gh, gw) for t in taps]
        embedding = v.ln_post(x[:, 0]) @ v.proj
        return torch.cat(maps, dim=1), embedding


class NetD(nn.Module):
    """Mixes the stacked CLIP token maps into one feature map."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, 1, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1), nn.LeakyReLU(0.2, True),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.skip(maps) + self.net(maps)


class NetC(nn.Module):
    """Joint head: feature map ++ sentence embedding broadcast -> one logit."""

    def __init__(self, channels: int, cond_dim: int, grid: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels + cond_dim, channels // 4, 3, 1, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(channels // 4, 1, grid, 1, 0),
        )

    def forward(self, feat: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        s = sentence[:, :, None, None].expand(-1, -1, *feat.shape[-2:])
        return self.net(torch.cat([feat, s], dim=1)).flatten()


class Discriminator(nn.Module):
    def __init__(self, cfg: ModelConfig, clip: nn.Module):
        super().__init__()
        w = clip_widths(clip)
        d = cfg.discriminator
        self.features = ClipImageFeatures(clip, d.blocks)
        self.net_d = NetD(len(d.blocks) * w["vision"], d.channels)
        self.net_c = NetC(d.channels, w["embed"], w["vision_grid"])

    def logit(self, maps: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        return self.net_c(self.net_d(maps), sentence)

    def forward(self, img: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        maps, _ = self.features(img)
        return self.logit(maps, sentence)
