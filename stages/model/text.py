"""Text encoding + prompt prediction stages.

`clip`: the frozen CLIP text tower gives a sentence embedding and per-token
features; a trainable prompt predictor (FC + self-attention, paper §III-B2)
turns them into one deep prompt token per prompted CLIP-ViT block.
`none`: the "no text" ablation (paper Table IV): a constant, caption-blind
condition of the same shape.
"""

from __future__ import annotations

import torch
from torch import nn

from clipsr_cli.model.clip import TextTower, clip_widths
from clipsr_cli.plugins.hookspecs import hookimpl
from clipsr_cli.plugins.protocols import TextCondition, TextFeatures


class PromptPredictor(nn.Module):
    """FC from the sentence embedding to prompt tokens, then one self-attention
    layer over [prompts; projected text tokens] so each prompt can attend to
    the salient words.  The prompt outputs are kept."""

    def __init__(self, embed_dim: int, text_width: int, vision_width: int, n_prompts: int, heads: int):
        super().__init__()
        self.n_prompts = n_prompts
        self.vision_width = vision_width
        self.fc = nn.Linear(embed_dim, n_prompts * vision_width)
        self.token_proj = nn.Linear(text_width, vision_width)
        self.norm = nn.LayerNorm(vision_width)
        self.attn = nn.MultiheadAttention(vision_width, heads, batch_first=True)

    def forward(self, feats: TextFeatures) -> torch.Tensor:
        b = feats.sentence.shape[0]
        prompts = self.fc(feats.sentence).view(b, self.n_prompts, self.vision_width)
        seq = self.norm(torch.cat([prompts, self.token_proj(feats.tokens)], dim=1))
        keep = torch.zeros(b, self.n_prompts, dtype=torch.bool, device=seq.device)
        mask = torch.cat([keep, feats.pad_mask], dim=1)
        attended, _ = self.attn(seq, seq, seq, key_padding_mask=mask, need_weights=False)
        return prompts + attended[:, : self.n_prompts]


class ClipTextEncoder(nn.Module):
    clip_sentence = True

    def __init__(self, clip: nn.Module, n_prompts: int, heads: int):
        super().__init__()
        w = clip_widths(clip)
        self.embed_dim = w["embed"]
        self.tower = TextTower(clip)
        self.predictor = PromptPredictor(w["embed"], w["text"], w["vision"], n_prompts, heads)

    def n_tokens(self, caption: str) -> int:
        return self.tower.n_tokens(caption)

    def encode(self, captions: list[str]) -> TextFeatures:
        device = self.predictor.fc.weight.device
        sentence, tokens, pad_mask = self.tower(self.tower.tokenize(captions).to(device))
        return TextFeatures(sentence, tokens, pad_mask)

    def forward(self, feats: TextFeatures) -> TextCondition:
        return TextCondition(feats.sentence, self.predictor(feats))


class NoText(nn.Module):
    """Ablation: the caption is ignored; a learned constant takes its place."""

    clip_sentence = False

    def __init__(self, clip: nn.Module, n_prompts: int):
        super().__init__()
        w = clip_widths(clip)
        self.embed_dim = w["embed"]
        self.sentence = nn.Parameter(torch.randn(w["embed"]) * 0.02)
        self.prompts = nn.Parameter(torch.zeros(n_prompts, w["vision"]))

    def n_tokens(self, caption: str) -> int:
        return 0

    def encode(self, captions: list[str]) -> TextFeatures:
        b, d = len(captions), self.sentence.device
        empty = torch.zeros(b, 0, device=d)
        return TextFeatures(empty, empty[..., None], torch.zeros(b, 0, dtype=torch.bool, device=d))

    def forward(self, feats: TextFeatures) -> TextCondition:
        b = feats.sentence.shape[0]
        return TextCondition(self.sentence.expand(b, -1), self.prompts.expand(b, -1, -1))


@hookimpl
def register_text_encoders(register):
    register("clip", lambda cfg, clip: ClipTextEncoder(clip, cfg.generator.prompt_tokens, cfg.generator.prompt_heads))
    register("none", lambda cfg, clip: NoText(clip, cfg.generator.prompt_tokens))
