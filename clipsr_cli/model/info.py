"""Parameter counts and FLOPs of a preset, computed without any weights file."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from clipsr_cli.model.clip import build_clip
from clipsr_cli.model.config import SCALES, ModelConfig
from clipsr_cli.model.generator import Generator


@dataclass
class ScaleInfo:
    scale: int
    lr_size: int
    trainable: int  # generator parameters that train
    frozen: int  # the shared frozen CLIP (text + image towers)
    image_gflops: float  # per image: everything after text encoding
    text_gflops: float  # per caption: frozen text tower + prompt predictor


def _count(gen: Generator) -> tuple[int, int]:
    seen, trainable, frozen = set(), 0, 0
    for p in gen.parameters():  # parameters() deduplicates the shared CLIP
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


def _gflops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


# the text tower runs on a caption's own length (CLIP's attention is causal):
# FLOPs per caption are those of a CUB-style caption of 14 tokens
TYPICAL_CAPTION = "this bird has a yellow belly, black wings and a short pointed beak"


def describe(cfg: ModelConfig, scales=SCALES) -> list[ScaleInfo]:
    """Built on the meta device: no memory, no compute, no download."""
    rows = []
    with torch.device("meta"):
        clip = build_clip(cfg, device="meta")
        for scale in scales:
            gen = Generator(cfg, clip, scale)
            lr_size = cfg.generator.hr_crop // scale
            lr = torch.zeros(1, 3, lr_size, lr_size)
            text = _gflops(lambda: gen.encode_text([TYPICAL_CAPTION]))
            cond = gen.encode_text([TYPICAL_CAPTION])
            image = _gflops(lambda: gen(lr, cond))
            rows.append(ScaleInfo(scale, lr_size, *_count(gen), image, text))
    return rows
