"""CLIP score: cosine similarity of the CLIP image and caption embeddings (the
paper's semantic-consistency claim).  The CLIP is a preset's (default `paper`:
OpenAI ViT-B/32), resolved through the weights manifest on first use."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from clipsr_cli.model.clip import TextTower, clip_widths, load_clip
from clipsr_cli.model.config import load_preset

PRESET = {"name": "paper"}  # which preset's CLIP scores; set by `score --clip-preset`


@functools.lru_cache(maxsize=2)
def _towers(preset: str):
    clip = load_clip(load_preset(preset))
    return clip, TextTower(clip)


def _preprocess(img: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's own preprocessing: shorter side to `size` (bicubic), centre crop, normalise."""
    h, w = img.shape[-2:]
    s = size / min(h, w)
    img = F.interpolate(img, size=(max(size, round(h * s)), max(size, round(w * s))), mode="bicubic",
                        align_corners=False, antialias=True).clamp(0, 1)
    top, left = (img.shape[-2] - size) // 2, (img.shape[-1] - size) // 2
    img = img[..., top : top + size, left : left + size]
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (img - mean) / std


@torch.no_grad()
def clip_score(sr: torch.Tensor, captions: list[list[str]]) -> torch.Tensor:
    """Per image: mean cosine between its embedding and those of its captions."""
    clip, text = _towers(PRESET["name"])
    image = F.normalize(clip.encode_image(_preprocess(sr.float(), clip_widths(clip)["image_size"])), dim=-1)
    scores = []
    for emb, caps in zip(image, captions):
        sentence, _, _ = text(text.tokenize(caps))
        scores.append((F.normalize(sentence, dim=-1) @ emb).mean())
    return torch.stack(scores).double()
