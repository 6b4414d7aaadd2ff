"""Degradations: how training makes an LR from an HR crop (`--degradation`).

`bicubic`: the paper's (PIL's antialiased bicubic, as MATLAB's imresize), the
default, for reproducing it.  `realistic`: Real-ESRGAN's second-order blur,
resize, noise and JPEG pipeline (`realistic.py`, parameters in
`realistic.toml`), for the compressed, noisy photos users upscale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipsr_cli.plugins.hookspecs import hookimpl


class Bicubic:
    """The paper's LR: the HR crop downsampled by PIL's bicubic (no randomness)."""

    def __init__(self, params_path: Path | None = None):
        if params_path is not None:
            from clipsr_cli.model.config import ConfigError

            raise ConfigError(f"{params_path}: the bicubic degradation takes no parameters")

    def __call__(self, hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
        arr = (hr.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        im = Image.fromarray(arr)
        lr = im.resize((im.width // scale, im.height // scale), Image.BICUBIC)
        return torch.from_numpy(np.asarray(lr, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _realistic(params_path: Path | None = None):
    from stages.degradations.realistic import Realistic

    return Realistic(params_path)


@hookimpl
def register_degradations(register):
    register("bicubic", Bicubic)
    register("realistic", _realistic)
