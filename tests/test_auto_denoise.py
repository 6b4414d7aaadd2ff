"""--denoise-strength auto: the JPEG quality read from pixels, the strength it gives,
and each image of a batch upscaled at its own strength."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from clipsr_cli.pipeline.auto_denoise import (
    FULL_DENOISE,
    NO_DENOISE,
    STEPS,
    AutoDenoise,
    auto_strength,
    image_strength,
)
from clipsr_cli.pipeline.jpeg_quality import jpeg_quality


def photo_like(seed: int, size: int = 128) -> Image.Image:
    """Smooth shapes plus fine texture: coefficients at every frequency, as a photo has."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)).resize(
        (size, size), Image.BICUBIC)
    fine = rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, np.float64) + fine, 0, 255).astype(np.uint8))


def saved_as_jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.mark.parametrize("quality", [30, 45, 60, 75, 85])
def test_the_quality_of_the_last_jpeg_save_is_read_from_the_pixels(quality):
    for seed in range(3):
        img = saved_as_jpeg(photo_like(seed), quality)
        assert abs(jpeg_quality(np.asarray(img)) - quality) <= 3, (seed, jpeg_quality(np.asarray(img)))


def test_no_quality_where_no_jpeg_grid_shows():
    """Never a JPEG, blurred or resized after the save, cropped off the 8-pixel grid,
    saved at 100 (steps of 1), or too small to judge: None."""
    img = photo_like(7)
    jpeg = saved_as_jpeg(img, 50)
    assert jpeg_quality(np.asarray(jpeg)) is not None
    for other in (img, jpeg.resize((96, 96), Image.BICUBIC), jpeg.filter(ImageFilter.GaussianBlur(1)),
                  jpeg.crop((3, 5, 128, 128)), saved_as_jpeg(img, 100), jpeg.crop((0, 0, 12, 12))):
        assert jpeg_quality(np.asarray(other)) is None, other.size


def test_clipped_blocks_do_not_hide_the_quality():
    """Blocks with white or black pixels leave the grid (clipping) and are left out."""
    arr = np.asarray(photo_like(2)).copy()
    arr[:64] = np.clip(arr[:64].astype(int) + 120, 0, 255)  # the top half mostly blown out
    assert abs(jpeg_quality(np.asarray(saved_as_jpeg(Image.fromarray(arr), 60))) - 60) <= 3


def test_the_strength_falls_from_all_to_none_across_the_quality_range():
    qualities = [None, 1, FULL_DENOISE - 10, FULL_DENOISE, (FULL_DENOISE + NO_DENOISE) // 2, NO_DENOISE, 100]
    strengths = [auto_strength(q) for q in qualities]
    assert strengths[0] == 0.0  # no JPEG traces: the clean model
    assert strengths[1:4] == [1.0, 1.0, 1.0] and strengths[-2:] == [0.0, 0.0]
    assert 0 < strengths[4] < 1
    assert all(a >= b for a, b in zip(strengths[1:], strengths[2:]))  # lower quality, never less denoising
    scaled = [auto_strength(q, top=0.75) for q in qualities]  # a pair's top: the same curve, lower
    assert scaled[1] == 0.75 and all(abs(a - 0.75 * b) <= 1 / STEPS for a, b in zip(scaled, strengths))
    as_tensor = torch.from_numpy(np.array(saved_as_jpeg(photo_like(1), 40))).permute(2, 0, 1).float() / 255
    assert image_strength(as_tensor) == 1.0
    assert image_strength(torch.from_numpy(np.array(photo_like(1))).permute(2, 0, 1).float() / 255) == 0.0


class Recorder:
    """A stand-in upscaler of one strength: it outputs its strength, and counts its calls."""

    def __init__(self, strength: float, made: list):
        self.strength, self.calls = strength, []
        made.append(strength)

    def upscale_batch(self, rgbs, captions, as_uint8=False, finish=None):
        self.calls.append(list(captions))
        return torch.stack([torch.full_like(x, self.strength) for x in rgbs])

    def output_size(self, lr):
        return tuple(2 * n for n in lr.shape[-2:])


def test_each_image_of_a_batch_is_upscaled_at_its_own_strength_in_order():
    made: list[float] = []
    auto = AutoDenoise(lambda s: Recorder(s, made))
    to_tensor = lambda img: torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255  # noqa: E731
    clean, heavy = to_tensor(photo_like(3)), to_tensor(saved_as_jpeg(photo_like(4), 40))
    out = auto.upscale_batch([heavy, clean, heavy], ["a", "b", "c"])
    assert [float(o.mean()) for o in out] == [1.0, 0.0, 1.0]
    assert made == [0.0, 1.0]  # the clean network at once, the others when first met
    assert auto.at(1.0).calls == [["a", "c"]] and auto.at(0.0).calls == [["b"]]  # one batch per strength
    auto.upscale_batch([heavy], ["d"])
    assert made == [0.0, 1.0]  # kept, not rebuilt
    assert auto.output_size(clean) == (256, 256)  # the rest is the clean upscaler's
