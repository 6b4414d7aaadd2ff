"""The Python API: what the `clipsr` command line is built on.

    import clipsr_cli as clipsr

    model = clipsr.load_model("clipsr-default-x4")          # a name, a file, an experiment folder
    sr = model.upscale(Image.open("bird.png"), "a red-headed woodpecker")   # PIL in, PIL out
    srs = model.upscale([a, b], ["a bird", "a cat"])        # a batch, one caption each
    clipsr.score(sr, hr, metrics=["psnr", "ssim"], crop_border=4)   # {"psnr": ..., "ssim": ...}

Images go in as a PIL image, a numpy array (H, W[, C]) of uint8, uint16 or
float in [0, 1], or a torch tensor (3, H, W) / (B, 3, H, W) in [0, 1]; each
comes back as the same type (a PIL image keeps its mode's kind: grayscale,
alpha, 16 bits).  Device and precision are chosen as the CLI chooses them,
tiling and batching are the CLI's own (`pipeline/upscaler.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from clipsr_cli.errors import UsageError
from clipsr_cli.plugins.protocols import Metric

ImageLike = Any  # PIL.Image.Image | np.ndarray | torch.Tensor


class Model:
    """A clipsr generator on its device, ready to upscale (built by `load_model`)."""

    def __init__(self, upscaler, weights: Path | str | None, denoise_strength: float | str | None = None):
        self.upscaler = upscaler
        self.weights = weights  # the file it was loaded from, a real model's name, None: a preset or a blend
        self.denoise_strength = denoise_strength  # the clean and denoising models blended: "auto" or 0..1

    @property
    def scale(self) -> int:
        return self.upscaler.gen.scale

    @property
    def preset(self) -> str:
        return self.upscaler.gen.cfg.name

    @property
    def device(self) -> torch.device:
        return self.upscaler.device

    @property
    def dtype(self) -> torch.dtype:
        return self.upscaler.dtype

    def upscale(self, images: ImageLike | Sequence[ImageLike], captions: str | Sequence[str] = "",
                batch_size: int | None = None):
        """One image (with one caption) or a list of images (one caption for all,
        or one each) upscaled; the same type out as in.  Consecutive same-size
        images go through the network together, up to `batch_size` (None: as
        many as fit in memory, as the CLI batches); large ones are tiled."""
        single = not isinstance(images, (list, tuple)) and not (torch.is_tensor(images) and images.dim() == 4)
        items = [images] if single else list(images)
        if isinstance(captions, str):
            captions = [captions] * len(items)
        if len(captions) != len(items):
            raise UsageError(f"{len(items)} image(s) but {len(captions)} caption(s): give one caption, or one each")
        decoded = [_decode(x) for x in items]
        outputs = self._upscale_decoded(decoded, list(captions), batch_size)
        alphas = [None if d.alpha is None else self.upscaler.upscale_alpha(d.alpha) for d in decoded]
        results = [_encode(*each) for each in zip(outputs, decoded, alphas, items)]
        if torch.is_tensor(images) and images.dim() == 4:
            return torch.stack(results)
        return results[0] if single else results

    def _upscale_decoded(self, decoded: list, captions: list[str], batch_size: int | None) -> list[torch.Tensor]:
        up, outputs, start = self.upscaler, [], 0
        for caption in captions:
            up.check_caption(caption, Path("<image>"))
        while start < len(decoded):
            rgb = decoded[start].rgb
            limit = up.batch_limit(rgb, batch_size)
            end = start + 1
            while end < len(decoded) and end - start < limit and decoded[end].rgb.shape == rgb.shape:
                end += 1
            outputs += list(up.upscale_batch([d.rgb for d in decoded[start:end]], captions[start:end]))
            start = end
        return [out.clamp(0, 1) for out in outputs]

    def __repr__(self) -> str:
        return (f"Model(preset={self.preset!r}, scale={self.scale}, device={str(self.device)!r}, "
                f"dtype={str(self.dtype).removeprefix('torch.')}, weights={str(self.weights) if self.weights else None!r})")


def load_model(weights: str | Path | None = None, *, preset: str | None = None, scale: int | None = None,
               device: str = "auto", precision: str | None = None, weights_dir: str | Path | None = None,
               tile: int | None = None, tile_pad: int = 16, outscale: float | None = None,
               denoise_strength: float | str | None = None,
               note: Callable[[str], None] | None = None, warn: Callable[[str], None] = print) -> Model:
    """A generator ready to upscale.  `weights`: a bundled or manifest model name
    (`clipsr-default-x8`), a generator file, a training checkpoint or an
    experiment folder; None: `preset` with untrained (seeded) weights, or the
    bundled default for `scale` (4 unless given): its real model (the clean
    model on an image that shows no JPEG, see `denoise_strength` "auto").  `device` "auto" and
    `precision` None choose as the CLI does (half on CUDA; on a CPU bf16 where it
    has AMX or AVX512-BF16 and measures faster, else fp32).
    `denoise_strength` (0..1): the bundled clean and real-world models of the
    scale blended weight by weight (Real-ESRGAN's option; 1 is the denoising
    model); "auto": each image at the strength its JPEG quality calls for, as
    the real models (`clipsr-default-real-x4`, `--real`) do.
    `note(text)` hears which model was chosen and why; `warn(text)` hears
    warnings (long captions, out-of-memory retries)."""
    from clipsr_cli.model.bundled import AUTO, default_model, model_file
    from clipsr_cli.model.checkpoint import checkpoint_config, load_generator, read_metadata
    from clipsr_cli.model.clip import load_clip
    from clipsr_cli.model.config import check_scale, load_preset
    from clipsr_cli.model.generator import Generator
    from clipsr_cli.pipeline.upscaler import Upscaler

    dev, dtype = pick(device, precision)
    note = note or (lambda text: None)
    real_scale, as_default = _real_model_asked(weights, preset, scale, denoise_strength)
    if real_scale is not None:  # the auto blend of the scale's clean and denoising models
        weights, scale, denoise_strength = None, real_scale, AUTO
    if denoise_strength is not None:
        return _denoising(denoise_strength, weights, preset, scale, weights_dir, note,
                          dict(warn=warn, dtype=dtype, tile=tile, tile_pad=tile_pad, outscale=outscale), dev,
                          as_default)
    if weights is None and preset is None:
        weights, said = default_model(scale or 4, weights_dir)
        note(said)
    if weights is None:
        cfg = load_preset(preset)
        note(f"no --weights: preset {cfg.name!r} with untrained generator weights; the output shows the "
             "pipeline, not CLIP-SR quality")
        clip = load_clip(cfg, weights_dir=weights_dir)
        with torch.random.fork_rng(devices=[]):  # the same untrained network every run: a resumed
            torch.manual_seed(0)                  # folder (--skip-existing) never mixes two of them
            gen = Generator(cfg, clip, check_scale(scale or 4))
    elif Path(weights).suffix.lower() == ".onnx":  # run by ONNX Runtime's CPU provider, in fp32
        from clipsr_cli.model.onnx import OnnxGenerator

        weights, dev, dtype = Path(weights), torch.device("cpu"), torch.float32
        if not weights.is_file():
            raise UsageError(f"--weights {weights}: no such file")
        gen = OnnxGenerator(weights)
        if scale is not None and scale != gen.scale:
            raise UsageError(f"--scale {scale} but {weights} is a x{gen.scale} model; drop --scale")
    else:
        weights = model_file(Path(weights), weights_dir)
        _, ckpt_scale = checkpoint_config(read_metadata(weights), weights)
        if scale is not None and scale != ckpt_scale:
            raise UsageError(f"--scale {scale} but {weights} is a x{ckpt_scale} model; "
                             f"drop --scale or use a x{scale} checkpoint")
        gen = load_generator(weights, weights_dir=weights_dir)
    upscaler = Upscaler(gen, dev, warn=warn, dtype=dtype, tile=tile, tile_pad=tile_pad, outscale=outscale)
    return Model(upscaler, weights)


def _real_model_asked(weights, preset, scale, denoise_strength) -> tuple[int | None, bool]:
    """(the scale whose real model is asked for, whether as the default), or (None, False).
    A real model's name asks for it; so does nothing at all (no weights, preset or strength):
    the real model is the clean model itself on an image that shows no JPEG, and ahead of it on
    every compressed one measured (README, "Which model by default")."""
    from clipsr_cli.model.bundled import REAL_MODELS, real_model_scale

    real_scale = real_model_scale(weights)
    if real_scale is None:
        default = weights is None and preset is None and denoise_strength is None and (scale or 4) in REAL_MODELS
        return (scale or 4, True) if default else (None, False)
    if denoise_strength is not None:
        raise UsageError(f"{weights} is --denoise-strength auto: drop --denoise-strength, or --weights for "
                         "another strength")
    if scale is not None and scale != real_scale:
        raise UsageError(f"--scale {scale} but {weights} is a x{real_scale} model; drop --scale")
    return real_scale, False


def _denoising(strength: float | str, weights, preset, scale, weights_dir, note, options: dict, dev,
               as_default: bool = False) -> Model:
    import copy

    from clipsr_cli.model.bundled import (
        AUTO,
        AUTO_TOP,
        DEFAULT_MODELS,
        DENOISE_MODELS,
        REAL_MODELS,
        interpolated,
        real_model,
    )
    from clipsr_cli.model.checkpoint import load_generator
    from clipsr_cli.model.weights import resolve
    from clipsr_cli.pipeline.auto_denoise import FULL_DENOISE, NO_DENOISE, AutoDenoise
    from clipsr_cli.pipeline.upscaler import Upscaler

    strength = parse_strength(strength)
    if weights is not None or preset is not None:
        raise UsageError("--denoise-strength blends the bundled clean and real-world models; drop --weights/--preset")
    scale = scale or 4
    names = DEFAULT_MODELS.get(scale), real_model(scale, DENOISE_MODELS)
    clean, real = (load_generator(resolve(n, weights_dir=weights_dir), weights_dir=weights_dir) for n in names)

    def blended(s: float) -> Upscaler:  # each strength its own network; the files are read once
        return Upscaler(interpolated(copy.deepcopy(clean), real, s), dev, **options)

    if strength == AUTO:
        top = AUTO_TOP[scale]
        note(f"no --weights: using the bundled default {REAL_MODELS[scale]}: {names[0]} where an image shows no "
             f"JPEG compression, blended with {names[1]} by the quality where one does (weights/MODEL_CARD.md)"
             if as_default else
             f"denoise strength auto: {names[0]} and {names[1]} blended for each image by the JPEG quality "
             f"its pixels show (none without JPEG traces, {top:g} at quality {FULL_DENOISE} and below, "
             f"falling to none at {NO_DENOISE})")
        return Model(AutoDenoise(blended, top), REAL_MODELS[scale], AUTO)
    note(f"--denoise-strength {strength:g}: {names[0]} and {names[1]} blended, {strength:.0%} of the denoising model")
    return Model(blended(strength), None, strength)


def parse_strength(strength: float | str) -> float | str:
    """A denoise strength as given: a number in [0, 1] or "auto"."""
    from clipsr_cli.model.bundled import AUTO

    if isinstance(strength, str):
        if strength.strip().lower() == AUTO:
            return AUTO
        try:
            strength = float(strength)
        except ValueError:
            raise UsageError(f"--denoise-strength {strength}: give a number in [0, 1] or {AUTO}") from None
    if not 0.0 <= strength <= 1.0:  # also refuses nan
        raise UsageError(f"--denoise-strength {strength}: must be in [0, 1] (0 keeps texture, 1 removes noise) "
                         f"or {AUTO}")
    return strength


def pick(device: str = "auto", precision: str | None = None) -> tuple[torch.device, torch.dtype]:
    """The device (this process's GPU under torchrun) and dtype, chosen once, at the edge."""
    from clipsr_cli.pipeline.devices import pick_device, pick_precision
    from clipsr_cli.train.distributed import launched, rank_device

    try:
        dev = rank_device(pick_device(device), launched())
        return dev, pick_precision(precision, dev)
    except ValueError as e:
        raise UsageError(str(e)) from None


# --- metrics ------------------------------------------------------------------------------------
def create_metric(name: str, **options) -> Metric:
    """A registered metric by name (`clipsr score --list`), as pyiqa's
    create_metric: call it as metric(sr, ref, crop_border, captions); it carries
    `lower_better`, `range` and `description`.  `options`: the metric's own
    (clip_score: preset)."""
    from clipsr_cli.plugins.registry import lookup

    metric = lookup("metric", name).factory
    return metric.with_options(**options) if options else metric


def list_metrics() -> dict[str, Metric]:
    from clipsr_cli.plugins.registry import registry

    return {name: entry.factory for name, entry in sorted(registry("metric").items())}


def score(sr: ImageLike, ref: ImageLike | None = None, metrics: Sequence[str] = ("psnr", "ssim"),
          crop_border: int = 0, captions: str | Sequence[str] | None = None) -> dict[str, float]:
    """Each metric of one SR image (against `ref` where it needs one), as the CLI
    scores a pair: BasicSR's conventions, `crop_border` pixels off each edge."""
    from clipsr_cli.pipeline.score import score_image

    chosen = [create_metric(m) for m in metrics]
    set_level = [m.name for m in chosen if m.set_level]
    if set_level:
        raise UsageError(f"{', '.join(set_level)}: one value per folder; use score_folders")
    caps = [captions] if isinstance(captions, str) else list(captions) if captions is not None else None

    def unavailable(metric, error):
        raise error

    a = _decode(sr).rgb
    b = None if ref is None else _decode(ref).rgb
    return score_image(a, b, chosen, crop_border, caps, unavailable)


def score_folders(sr_dir: str | Path, ref_dir: str | Path | None = None, metrics: Sequence[str] | None = None,
                  crop_border: int = 0, suffix: str = "", crop_to_common: bool = False,
                  captions: str | Path | None = None, warn: Callable[[str], None] = print):
    """Every image of `sr_dir` scored (paired with `ref_dir` by name, as the CLI
    pairs them): a FolderScores with per-image `rows`, `folder_values` (FID),
    `failed` and `unavailable`."""
    from clipsr_cli.io.captions import CaptionTable, read_caption_file
    from clipsr_cli.pipeline.score import FolderScoring, caption_lookup, pair_folders

    sr_dir, ref_dir = Path(sr_dir), None if ref_dir is None else Path(ref_dir)
    chosen = [create_metric(m) for m in (metrics or (("psnr", "ssim") if ref_dir is not None else ("niqe",)))]
    caption_of = caption_lookup(CaptionTable(read_caption_file(Path(captions))), sr_dir, suffix) if captions else None
    pairing = pair_folders(sr_dir, ref_dir, suffix)
    return FolderScoring(chosen, crop_border, caption_of, crop_to_common, warn=warn).run(sr_dir, pairing.pairs)


# --- images in and out ----------------------------------------------------------------------------
def _decode(image: ImageLike):
    """Any accepted image as the pipeline's Decoded (rgb (3, H, W) float in [0, 1], alpha, gray, bits)."""
    from clipsr_cli.io.images import Decoded, pil_to_decoded

    if isinstance(image, Image.Image):
        return pil_to_decoded(image)
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            return pil_to_decoded(Image.fromarray(image))
        arr = image.astype(np.float32) / (65535.0 if image.dtype == np.uint16 else 1.0)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        t = t[None].expand(3, -1, -1) if t.dim() == 2 else t.permute(2, 0, 1)
        alpha = t[3:].contiguous() if t.shape[0] == 4 else None
        return Decoded(t[:3].contiguous(), alpha, image.ndim == 2, 16 if image.dtype == np.uint16 else 8)
    if torch.is_tensor(image):
        if image.dim() != 3 or image.shape[0] != 3:
            raise UsageError(f"a tensor image is (3, H, W) or a batch (B, 3, H, W) in [0, 1], not {tuple(image.shape)}")
        return Decoded(image.detach().float().cpu().clamp(0, 1), None, False, 8)
    raise UsageError(f"an image is a PIL image, a numpy array or a torch tensor, not {type(image).__name__}")


def _encode(out: torch.Tensor, decoded, alpha: torch.Tensor | None, original: ImageLike):
    """The output (3, sH, sW) float (and its upscaled alpha) as the type, and kind, of the input."""
    from clipsr_cli.io.images import output_array

    if torch.is_tensor(original):
        return out.to(original.device, original.dtype if original.is_floating_point() else torch.float32)
    if isinstance(original, np.ndarray) and original.dtype != np.uint8:
        arr = out.permute(1, 2, 0).numpy()
        arr = arr @ np.array([[0.299], [0.587], [0.114]], np.float32) if original.ndim == 2 else arr
        if alpha is not None:
            arr = np.concatenate([arr, alpha.permute(1, 2, 0).numpy()], axis=2)
        arr = arr[..., 0] if original.ndim == 2 else arr
        return (np.rint(arr * 65535).astype(np.uint16) if original.dtype == np.uint16
                else arr.astype(original.dtype))
    arr = output_array(Path("image.png"), out, alpha, decoded.gray, decoded.bits)  # what a PNG output holds
    arr = arr[..., 0] if arr.shape[2] == 1 else arr
    if isinstance(original, np.ndarray):
        return arr
    return Image.fromarray(arr)
