"""The CLIP-SR generator H(I_LR, T), composed from registered stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.model.config import ModelConfig, check_scale
from clipsr_cli.plugins.registry import lookup


class Generator(nn.Module):
    """text stage -> refiner stage -> upsampler stage.

    Inputs are RGB in [0, 1] of any size; the output is exactly
    (scale*H, scale*W).  Sides are padded (replicate) to the encoder's multiple
    and the padding is cropped off the output: the input is never resized.
    """

    def __init__(self, cfg: ModelConfig, clip: nn.Module, scale: int):
        super().__init__()
        self.cfg = cfg
        self.scale = check_scale(scale)
        self.clip = clip  # frozen; shared with the discriminator during training
        stages = cfg.stages
        self.text = lookup("text_encoder", stages.text_encoder).factory(cfg, clip)
        refiner = lookup("refiner", stages.refiner).factory(cfg, clip, scale)
        # the upsampler fuses the caption when the preset asks (`upsampler_text`)
        self.upsampler_text = cfg.generator.upsampler_text
        text_dim = self.text.embed_dim if self.upsampler_text else None
        self.upsampler = lookup("upsampler", stages.upsampler).factory(cfg, scale, refiner.out_channels, text_dim)
        # A baseline upsampler that ignores features needs no refiner at all.
        self.refiner = refiner if self.upsampler.uses_features else None
        self.multiple = refiner.multiple if self.refiner is not None else 1

    def encode_text(self, captions: list[str]):
        return self.text(self.text.encode(captions))

    def forward(self, lr: torch.Tensor, cond) -> torch.Tensor:
        h, w = lr.shape[-2:]
        m = self.multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        padded = pad_h or pad_w or torch.compiler.is_compiling()  # an exported graph pads whatever the size
        x = F.pad(lr, (0, pad_w, 0, pad_h), mode="replicate") if padded else lr
        # in the weights' dtype (bf16 once cast for a CPU); the upsampler's global
        # residual takes the LR as given and returns the image in its dtype
        features = self.refiner(x.to(self.weights_dtype), cond) if self.refiner is not None else None
        sr = self.upsampler(features, x, cond.sentence if self.upsampler_text else None)
        return sr[..., : h * self.scale, : w * self.scale]

    @property
    def weights_dtype(self) -> torch.dtype:
        return next(self.upsampler.parameters(), torch.empty(0)).dtype

    # --- parameters that are ours (not the frozen CLIP) ---------------------
    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """State without the frozen CLIP, which is loaded from its own file."""
        return state_without(self, self.clip)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


def state_without(module: nn.Module, shared: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state minus the tensors of `shared` (the frozen CLIP it holds
    by reference), detached."""
    skip = {id(t) for t in shared.state_dict(keep_vars=True).values()}
    return {k: v.detach() for k, v in module.state_dict(keep_vars=True).items() if id(v) not in skip}
