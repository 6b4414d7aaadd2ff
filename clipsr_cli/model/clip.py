"""Loading the frozen open_clip model, and the two views of it clipsr uses.

Loading is kept apart from the network definitions: stages receive an already
built, frozen open_clip model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from clipsr_cli.model.config import ModelConfig
from clipsr_cli.model.kernels import vit_block

CONTEXT_LENGTH = 77  # CLIP's text positions
MAX_CAPTION_TOKENS = CONTEXT_LENGTH - 2  # without the start and end markers


def build_clip(cfg: ModelConfig, weights_path: str | Path | None = None, device="cpu") -> nn.Module:
    """The frozen open_clip model of a preset.

    `weights_path`: a local checkpoint (safetensors or a plain state dict),
    loaded by open_clip itself (`pretrained=<file>` for its named models,
    `load_checkpoint` for a custom architecture).  Without it the model is
    randomly initialised from `clip.seed`, so an untrained tower is reproducible.
    """
    spec = cfg.clip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if spec.arch:
            model = open_clip.CLIP(**json.loads(spec.arch))
            if weights_path:
                open_clip.load_checkpoint(model, str(weights_path))
        else:
            if spec.model not in open_clip.list_models():
                raise ValueError(f"unknown open_clip model {spec.model!r} in preset {cfg.name!r}")
            logger = logging.getLogger()  # open_clip warns on root when it loads no weights
            level = logger.level
            logger.setLevel(logging.ERROR)
            try:
                model = open_clip.create_model(
                    spec.model, pretrained=str(weights_path) if weights_path else None, device=device
                )
            finally:
                logger.setLevel(level)
    model.eval().requires_grad_(False)
    return model


def load_clip(cfg: ModelConfig, weights_path=None, weights_dir=None, pretrained: bool = True) -> nn.Module:
    """Build the preset's CLIP, resolving its manifest weights when it names any."""
    if weights_path is None and pretrained and cfg.clip.weights:
        from clipsr_cli.model.weights import resolve

        weights_path = resolve(cfg.clip.weights, weights_dir=weights_dir)
    return build_clip(cfg, weights_path)


def clip_widths(clip: nn.Module) -> dict[str, int]:
    """Embedding and tower widths, read off the model rather than configured twice."""
    return {
        "embed": int(clip.text_projection.shape[1]),
        "text": int(clip.token_embedding.weight.shape[1]),
        "vision": int(clip.visual.conv1.out_channels),
        "vision_layers": len(clip.visual.transformer.resblocks),
        "vision_grid": int(clip.visual.grid_size[0]),
        "image_size": int(clip.visual.image_size[0]),
    }


class TextTower(nn.Module):
    """The frozen CLIP text encoder: sentence embedding plus per-token features."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT_LENGTH)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """(B, n) token ids.  CLIP's text attention is causal, so no position
        depends on the padding after the last end token: n is the longest
        caption's length (a typical caption is under 20 of the 77 positions),
        and the tower's outputs at the kept positions are the same."""
        tokens = self.tokenizer(captions)
        if self.clip.attn_mask is None:  # not causal: every position sees the padding
            return tokens
        # from the text, not the tensor: `clipsr info` tokenises on the meta device
        longest = max(self.n_tokens(c) for c in captions) + 2  # with the start and end markers
        return tokens[:, : min(longest, tokens.shape[1])]

    def n_tokens(self, caption: str) -> int:
        """BPE tokens of a caption, without start/end markers (CLIP keeps MAX_CAPTION_TOKENS)."""
        return len(self.tokenizer.encode(caption))

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor):
        """(sentence embedding, token features, pad mask) of `tokenize`'s output."""
        c = self.clip
        eot = tokens.argmax(dim=-1)  # the end token has the largest id
        n = tokens.shape[1]
        x = c.token_embedding(tokens) + c.positional_embedding[:n]
        x = c.transformer(x, attn_mask=None if c.attn_mask is None else c.attn_mask[:n, :n])
        x = c.ln_final(x)
        sentence = x[torch.arange(x.shape[0]), eot] @ c.text_projection
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        pad_mask = positions[None, :] > eot[:, None]  # True where there is no token
        return sentence, x, pad_mask


def interpolate_pos_embed(pos: torch.Tensor, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """CLIP's (1 + grid*grid, W) positional table resized to an (h, w) token grid.

    Arbitrary LR sizes and aspect ratios give arbitrary encoder grids; rather
    than resizing the image to CLIP's square grid (which loses the aspect ratio
    and the exact output size), the positional embedding is resampled bicubically,
    as ViTs are fine-tuned at new resolutions.  Identity when the grid matches.
    """
    cls, table = pos[:1], pos[1:]
    if size == (grid, grid) and not torch.compiler.is_compiling():  # export: one graph for every size
        return pos
    table = table.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table.float(), size=size, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls, table.flatten(2).transpose(1, 2)[0]], dim=0)


def vit_tokens(visual: nn.Module, tokens: torch.Tensor, size: tuple[int, int],
               prompts: dict[int, torch.Tensor] | None = None, taps: tuple[int, ...] = ()):
    """The frozen CLIP-ViT over patch tokens (B, h*w, W): class token and
    positional table (resampled to (h, w)) added, then every block.  `prompts`
    maps a 0-based block to a (B, W) deep prompt appended before that block and
    dropped after it (VPT / GALIP).  Returns all tokens after the last block
    (class token first) and the patch tokens after each block in `taps`."""
    b = tokens.shape[0]
    cls = visual.class_embedding.to(tokens.dtype).expand(b, 1, -1)
    x = torch.cat([cls, tokens], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, int(visual.grid_size[0]), size).to(x.dtype)
    x = visual.ln_pre(x)
    prompts = prompts or {}
    tapped = []
    for i, block in enumerate(visual.transformer.resblocks):
        if i in prompts:
            x = vit_block(block, torch.cat([x, prompts[i][:, None].to(x.dtype)], dim=1))[:, :-1]
        else:
            x = vit_block(block, x)
        if i in taps:
            tapped.append(x[:, 1:])
    return x, tapped


class PromptedViT(nn.Module):
    """Token maps through the frozen CLIP-ViT with deep prompts: prompt j is
    appended before block `blocks[j]` (the preset's `prompt_blocks`)."""

    def __init__(self, clip: nn.Module, blocks: tuple[int, ...]):
        super().__init__()
        self.visual = clip.visual
        self.blocks = tuple(blocks)

    def forward(self, tokens: torch.Tensor, size: tuple[int, int], prompts: torch.Tensor | None) -> torch.Tensor:
        by_block = None if prompts is None else {blk: prompts[:, j] for j, blk in enumerate(self.blocks)}
        return vit_tokens(self.visual, tokens, size, by_block)[0][:, 1:]


def preprocess_cfg(clip: nn.Module) -> dict:
    """open_clip's own evaluation preprocessing for the model in hand (its
    image size, mean and std; OpenAI's where the model names none)."""
    cfg = open_clip.get_model_preprocess_cfg(clip)
    size = cfg.get("size", clip.visual.image_size)
    return {"size": size if isinstance(size, int) else int(size[0]),
            "mean": tuple(cfg.get("mean", OPENAI_DATASET_MEAN)), "std": tuple(cfg.get("std", OPENAI_DATASET_STD))}


def clip_preprocess(img: torch.Tensor, cfg: dict) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> CLIP's input, as open_clip's evaluation transform
    makes it: shorter side to `size` (bicubic, antialiased), centre crop,
    normalise.  In fp32 whatever the autocast (the CPU has no bf16 antialiased
    kernel); differentiable, so the discriminator's gradients reach the image."""
    size = cfg["size"]
    img = img.float()
    h, w = img.shape[-2:]
    s = size / min(h, w)
    img = F.interpolate(img, size=(max(size, round(h * s)), max(size, round(w * s))), mode="bicubic",
                        align_corners=False, antialias=True).clamp(0, 1)
    top, left = (img.shape[-2] - size) // 2, (img.shape[-1] - size) // 2
    img = img[..., top : top + size, left : left + size]
    mean = torch.tensor(cfg["mean"], device=img.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=img.device).view(1, 3, 1, 1)
    return (img - mean) / std
