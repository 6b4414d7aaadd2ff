"""Training losses (DESIGN.md §1): VGG-19 perceptual, GALIP hinge + MA-GP,
the generator's adversarial + CLIP-similarity term, and the texture critic's
per-pixel cross-entropy (Real-ESRGAN)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in torchvision's vgg19().features
VGG19_LAYERS = (1, 6, 11, 20, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features(last: int = VGG19_LAYERS[-1]) -> nn.Sequential:
    from torchvision.models import vgg19

    return vgg19(weights=None).features[: last + 1]


def load_vgg19_features(path: str | Path) -> nn.Sequential:
    """VGG-19 conv layers up to relu5_1 from a torchvision state dict file
    (loaded with weights_only: no code runs from the file)."""
    net = vgg19_features()
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    wanted = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    wanted = {k: v for k, v in wanted.items() if int(k.split(".")[0]) < len(net)}
    net.load_state_dict(wanted, strict=True)
    return net


class PerceptualLoss(nn.Module):
    """sum_i w_i * L1(phi_i(SR), phi_i(HR)) over five VGG-19 activations, inputs
    in [0, 1] normalised with ImageNet statistics.  Built once, frozen."""

    def __init__(self, features: nn.Sequential, layer_weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)):
        super().__init__()
        if len(layer_weights) != len(VGG19_LAYERS):
            raise ValueError(f"{len(layer_weights)} layer weights for {len(VGG19_LAYERS)} VGG layers")
        self.features = features.eval().requires_grad_(False)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG19_LAYERS:
                out.append(x)
        return out

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self._activations(hr)
        return sum(w * F.l1_loss(a, t) for w, a, t in zip(self.layer_weights, self._activations(sr), target))

    def train(self, mode: bool = True):  # the VGG stays in eval mode
        return super().train(False)


def d_hinge_loss(real: torch.Tensor, fake: torch.Tensor, mismatched: torch.Tensor | None) -> torch.Tensor:
    """GALIP: relu(1 - D(real, T)) + 1/2 [relu(1 + D(fake, T)) + relu(1 + D(real, T'))]."""
    mis = F.relu(1 + mismatched).mean() if mismatched is not None else 0.0
    return F.relu(1 - real).mean() + 0.5 * (F.relu(1 + fake).mean() + mis)


def ma_gp(logits: torch.Tensor, inputs: tuple[torch.Tensor, ...], weight: float = 2.0,
          power: float = 6.0) -> torch.Tensor:
    """Matching-aware gradient penalty: weight * mean(||dD/d(inputs)||^power),
    the norm over the real image's CLIP features and the sentence embedding together."""
    grads = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    flat = torch.cat([g.flatten(1) for g in grads], dim=1)
    return weight * flat.norm(dim=1).pow(power).mean()


def g_adversarial(logits: torch.Tensor, image_embedding: torch.Tensor, sentence: torch.Tensor,
                  alpha: float = 4.0) -> torch.Tensor:
    """-D(C(SR), T) - alpha * cos(CLIP_image(SR), CLIP_text(T))."""
    return -logits.mean() - alpha * F.cosine_similarity(image_embedding, sentence, dim=-1).mean()


def d_bce_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's per-pixel binary cross-entropy: real -> 1, fake -> 0."""
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def g_bce_loss(fake: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating loss: make D call each pixel real."""
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
