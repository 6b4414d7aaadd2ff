"""`--denoise-strength auto` (the real models' default): each image upscaled by the
clean and real-world models blended at the strength its own JPEG quality calls for.
Clean inputs get the clean model, lightly compressed ones a little denoising, heavily
compressed ones all of it; one fixed strength must trade one of these for the others."""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch

from clipsr_cli.pipeline.jpeg_quality import jpeg_quality

# From the JPEG quality to the strength: none where no JPEG grid shows, the pair's top
# strength at or below FULL_DENOISE, linear from there to none at NO_DENOISE.  Measured on
# the training photos, not on a benchmark's (benchmarks/auto_strength.py; BENCHMARKS.md).
NO_DENOISE = 100
FULL_DENOISE = 75
STEPS = 20  # strengths used: multiples of 1/STEPS, a blended network kept for each one met


def auto_strength(quality: int | None, top: float = 1.0) -> float:
    """The denoise strength for an image last saved as a JPEG of `quality` (None: no JPEG)."""
    if quality is None:
        return 0.0
    fraction = min(1.0, max(0.0, (NO_DENOISE - quality) / (NO_DENOISE - FULL_DENOISE)))
    return round(fraction * top * STEPS) / STEPS


def image_strength(rgb: torch.Tensor, top: float = 1.0) -> float:
    """(3, H, W) in [0, 1] -> its strength; decoded 8-bit values are exact multiples of 1/255."""
    pixels = rgb.detach().float().mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return auto_strength(jpeg_quality(np.ascontiguousarray(pixels)), top)


class AutoDenoise:
    """An `Upscaler` to its callers: one per strength met (`make(strength)` builds it),
    each image sent to its strength's.  Sizes, tiling and batching are the same for
    every strength, so they are asked of the clean one (strength 0).  `top`: the
    strength of the most compressed images."""

    def __init__(self, make: Callable[[float], object], top: float = 1.0):
        self._make, self.top = make, top
        self._by_strength: dict[float, object] = {}
        self._lock = threading.Lock()
        self.clean = self.at(0.0)

    def at(self, strength: float):
        with self._lock:  # lanes may meet a new strength at once: one network built
            if strength not in self._by_strength:
                self._by_strength[strength] = self._make(strength)
            return self._by_strength[strength]

    def __getattr__(self, name: str):
        return getattr(self.__dict__["clean"], name)

    def upscale_batch(self, rgbs: list[torch.Tensor], captions: list[str], as_uint8: bool = False,
                      finish=None) -> torch.Tensor:
        groups: dict[float, list[int]] = {}
        for i, rgb in enumerate(rgbs):
            groups.setdefault(image_strength(rgb, self.top), []).append(i)
        if len(groups) == 1:
            return self.at(next(iter(groups))).upscale_batch(rgbs, captions, as_uint8, finish)
        outputs: list[torch.Tensor | None] = [None] * len(rgbs)
        for strength, members in groups.items():
            done = self.at(strength).upscale_batch([rgbs[i] for i in members], [captions[i] for i in members],
                                                   as_uint8, finish)
            for i, out in zip(members, done):
                outputs[i] = out
        return torch.stack(outputs)

    def upscale(self, rgb: torch.Tensor, caption: str, image) -> torch.Tensor:  # not delegated: it would skip auto
        self.check_caption(caption, image)
        return self.upscale_batch([rgb], [caption])[0]
