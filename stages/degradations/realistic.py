"""The `realistic` degradation: Real-ESRGAN's second-order pipeline on one HR
crop, on the CPU, in the data loader.  blur -> random resize -> Gaussian or
Poisson noise (colour or gray) -> JPEG, twice (the second pass with its own
settings and a blur that may be skipped), then the final resize to the LR size
with a sinc filter and a JPEG, in random order.  Parameters: `realistic.toml`
beside this module, any key replaced by a user's TOML file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipsr_cli.model.config import ConfigError, read_toml
from stages.degradations.kernels import random_kernel, sinc_kernel

SHIPPED = Path(__file__).with_name("realistic.toml")
MODES = ("area", "bilinear", "bicubic")


def load_params(path: Path | None = None) -> dict:
    """The shipped parameters with a user's file laid over them; unknown
    sections or keys are errors naming the file and what is allowed."""
    params = read_toml(SHIPPED)
    if path is None:
        return params
    user = read_toml(Path(path))
    for section, values in user.items():
        if section not in params or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown section [{section}]; sections: {', '.join(params)}")
        unknown = set(values) - set(params[section])
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} in [{section}]; "
                              f"allowed: {', '.join(sorted(params[section]))}")
        params[section] = params[section] | values
    return params


def blur(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    k = torch.from_numpy(kernel).float()[None, None].expand(3, 1, -1, -1)
    pad = kernel.shape[0] // 2
    mode = "reflect" if pad < min(img.shape[-2:]) else "replicate"
    return F.conv2d(F.pad(img[None], (pad,) * 4, mode=mode), k, groups=3)[0]


def resize(img: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool = False) -> torch.Tensor:
    """`antialias`: bilinear and bicubic low-pass before they shrink, as image software does when it
    downsizes a photo; without it they alias, as Real-ESRGAN's F.interpolate does (area never aliases)."""
    size = (max(1, size[0]), max(1, size[1]))
    extra = {} if mode == "area" else {"align_corners": False, "antialias": antialias}
    return F.interpolate(img[None], size=size, mode=mode, **extra)[0]


def add_noise(img: torch.Tensor, rng: np.random.Generator, p: dict) -> torch.Tensor:
    gray = rng.random() < p["gray_noise_prob"]
    shape = (1, *img.shape[1:]) if gray else img.shape
    if rng.random() < p["gaussian_noise_prob"]:
        noise = rng.normal(0.0, rng.uniform(*p["noise_range"]) / 255.0, shape)
    else:  # Poisson: shot noise of 8-bit counts, scaled
        base = img.mean(0, keepdim=True) if gray else img
        counts = np.clip(base.numpy(), 0, 1) * 255.0
        noise = (rng.poisson(counts) - counts) / 255.0 * rng.uniform(*p["poisson_scale_range"])
    return (img + torch.from_numpy(np.broadcast_to(noise, img.shape).astype(np.float32))).clamp(0, 1)


def jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


class Realistic:
    """The Degradation of `clipsr train --degradation realistic`."""

    def __init__(self, params_path: Path | None = None):
        self.params = load_params(params_path)

    def _pass(self, img: torch.Tensor, rng: np.random.Generator, p: dict, base: tuple[int, int],
              antialias: bool) -> torch.Tensor:
        if rng.random() < p["blur_prob"]:
            img = blur(img, random_kernel(rng, p))
        which = rng.choice(3, p=np.asarray(p["resize_prob"]) / np.sum(p["resize_prob"]))
        factor = (rng.uniform(1, p["resize_range"][1]), rng.uniform(p["resize_range"][0], 1), 1.0)[which]
        mode = str(rng.choice(MODES))
        img = resize(img, (int(base[0] * factor), int(base[1] * factor)), mode, antialias).clamp(0, 1)
        img = add_noise(img, rng, p)
        return jpeg(img, rng.integers(p["jpeg_range"][0], p["jpeg_range"][1] + 1))

    def __call__(self, hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
        h, w = hr.shape[-2:]
        lr_size = (h // scale, w // scale)
        if rng.random() < self.params["mix"]["bicubic_prob"]:  # a clean sample: the model keeps clean inputs sharp
            lr = F.interpolate(hr.float()[None], size=lr_size, mode="bicubic", antialias=True, align_corners=False)
            return (lr[0].clamp(0, 1) * 255).round() / 255  # antialiased, as PIL's (the paper's LR)
        # drawn only where asked for, so that Real-ESRGAN's settings keep their random stream
        antialias = bool(self.params["mix"]["antialias_prob"]) and rng.random() < self.params["mix"]["antialias_prob"]
        img = self._pass(hr.float(), rng, self.params["first"], (h, w), antialias)
        # the second pass resizes around the LR size (Real-ESRGAN's `ori / scale * factor`)
        img = self._pass(img, rng, self.params["second"], lr_size, antialias)

        def final_resize(x):
            x = resize(x, lr_size, str(rng.choice(MODES)), antialias)
            if rng.random() < self.params["final"]["sinc_prob"]:
                size = int(rng.choice(np.arange(7, 22, 2)))
                x = blur(x, sinc_kernel(size, rng.uniform(np.pi / 3 if size < 13 else np.pi / 5, np.pi)))
            return x.clamp(0, 1)

        quality = rng.integers(self.params["second"]["jpeg_range"][0], self.params["second"]["jpeg_range"][1] + 1)
        if rng.random() < self.params["final"]["jpeg_last_prob"]:  # as a photo resized, then saved
            img = jpeg(final_resize(img), quality)
        else:
            img = final_resize(jpeg(img, quality))
        return (img * 255).round().clamp(0, 255) / 255  # on the 8-bit grid, as a saved LR would be
