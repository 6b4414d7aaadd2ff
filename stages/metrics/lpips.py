"""LPIPS v0.1 (Zhang et al. 2018), AlexNet variant — the number SR papers report.

Inputs in [0, 1] are mapped to [-1, 1] and through LPIPS's scaling layer; the
five ReLU outputs of torchvision's AlexNet are unit-normalised over channels,
their squared differences weighted by the learned 1x1 "lin" layers, averaged
over space and summed.  Two weights files, both through the manifest: the
ImageNet AlexNet (`alexnet-imagenet`) and the lin layers (`lpips-alex-lin`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from clipsr_cli.plugins.conventions import crop_border as _crop

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CUTS = (2, 5, 8, 10, 12)  # AlexNet `features` slices ending at relu1..relu5
CHANNELS = (64, 192, 384, 256, 256)


def _state(path: str | Path) -> dict[str, torch.Tensor]:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("params", "state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    return state


class LPIPS(nn.Module):
    def __init__(self, alexnet_path: str | Path | None = None, lin_path: str | Path | None = None):
        from torchvision.models import alexnet

        super().__init__()
        features = alexnet(weights=None).features[: CUTS[-1]]
        if alexnet_path is not None:
            own = {k.removeprefix("features."): v for k, v in _state(alexnet_path).items() if k.startswith("features.")}
            features.load_state_dict({k: v for k, v in own.items() if int(k.split(".")[0]) < CUTS[-1]})
        self.slices = nn.ModuleList(features[a:b] for a, b in zip((0,) + CUTS[:-1], CUTS))
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        if lin_path is not None:
            state = _state(lin_path)
            for i, lin in enumerate(self.lins):
                key = next((k for k in (f"lin{i}.model.1.weight", f"lins.{i}.model.1.weight", f"lin{i}.model.0.weight")
                            if k in state), None)
                if key is None:
                    raise ValueError(f"{lin_path}: no weights for LPIPS lin layer {i}")
                lin.weight.data.copy_(state[key])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x / (x.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B,) distances of images in [0, 1]."""
        fa, fb = self._features(a), self._features(b)
        return sum(lin((x - y).square()).mean(dim=(1, 2, 3)) for lin, x, y in zip(self.lins, fa, fb))


@functools.lru_cache(maxsize=2)
def _model(weights_dir: str | None = None) -> LPIPS:
    from clipsr_cli.model.weights import resolve

    return LPIPS(resolve("alexnet-imagenet", weights_dir=weights_dir),
                 resolve("lpips-alex-lin", weights_dir=weights_dir))


@torch.no_grad()
def lpips(sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0) -> torch.Tensor:
    """LPIPS (AlexNet, v0.1) on RGB, `crop_border` pixels removed from each edge."""
    return _model()(_crop(sr, crop_border).float(), _crop(hr, crop_border).float()).double()
