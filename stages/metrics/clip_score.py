"""CLIP score: cosine similarity of the CLIP image and caption embeddings (the
paper's semantic-consistency claim).  The CLIP is a preset's (default `paper`:
OpenAI ViT-B/32), resolved through the weights manifest on first use."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from clipsr_cli.model.clip import TextTower, clip_preprocess, load_clip, preprocess_cfg
from clipsr_cli.model.config import load_preset


@functools.lru_cache(maxsize=2)
def _towers(preset: str):
    clip = load_clip(load_preset(preset))
    return clip, TextTower(clip)


@torch.no_grad()
def clip_score(sr: torch.Tensor, captions: list[list[str]], preset: str = "paper") -> torch.Tensor:
    """Per image: mean cosine between its embedding and those of its captions,
    by the CLIP of `preset`."""
    clip, text = _towers(preset)
    image = F.normalize(clip.encode_image(clip_preprocess(sr, preprocess_cfg(clip))), dim=-1)
    scores = []
    for emb, caps in zip(image, captions):
        sentence, _, _ = text(text.tokenize(caps))
        scores.append((F.normalize(sentence, dim=-1) @ emb).mean())
    return torch.stack(scores).double()
