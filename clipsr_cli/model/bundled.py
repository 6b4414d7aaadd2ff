"""The bundled models: the default for each scale, and model names accepted
wherever a checkpoint file is (`--weights clipsr-default-x8`)."""

from __future__ import annotations

from pathlib import Path

import torch

from clipsr_cli.errors import UsageError

DEFAULT_MODELS = {4: "clipsr-default-x4", 8: "clipsr-default-x8"}  # weights manifest names
# For compressed, noisy photos.  The denoise models are the clean ones fine-tuned on
# Real-ESRGAN's degradations (the same preset and scale, so weights can be blended).
# The real models (`--real`, or these names wherever a model name goes) are no file of
# their own: the clean and denoise models blended for each image at the strength its
# JPEG quality calls for (pipeline/auto_denoise.py; BENCHMARKS.md says why).
AUTO = "auto"
REAL_MODELS = {4: "clipsr-default-real-x4", 8: "clipsr-default-real-x8"}
DENOISE_MODELS = {4: "clipsr-default-real-denoise-x4", 8: "clipsr-default-real-denoise-x8"}
# The strength `auto` gives the most compressed images: where PSNR peaks on the training
# photos (benchmarks/auto_strength.py), 1 in every JPEG band below quality 75 at x4, 0.75 at x8.
AUTO_TOP = {4: 1.0, 8: 0.75}


def real_model_scale(weights) -> int | None:
    """The scale of a real model's name (`clipsr-default-real-x4`); None for anything else,
    a file of that name included."""
    if weights is None or Path(weights).exists():
        return None
    return next((scale for scale, name in REAL_MODELS.items() if name == str(weights)), None)


def real_model(scale: int, models: dict[int, str] = REAL_MODELS) -> str:
    if scale not in models:
        raise UsageError(f"no bundled real-world model for x{scale} (bundled: "
                         f"{', '.join(f'x{s}' for s in models)}); drop --real / --denoise-strength or give "
                         f"--scale {next(iter(models))}")
    return models[scale]


def interpolated(clean, real, strength: float):
    """`clean` with its own weights replaced by (1 - strength) * clean + strength * real:
    Real-ESRGAN's denoise strength, 0 keeping the most texture, 1 removing the most noise."""
    other = real.own_state_dict()  # built once, not once per tensor
    mixed = {k: torch.lerp(v.float(), other[k].float(), strength) if v.is_floating_point() else v
             for k, v in clean.own_state_dict().items()}
    clean.load_state_dict(mixed, strict=False)
    return clean


def default_model(scale: int, weights_dir=None) -> tuple[Path, str]:
    """The bundled model for `scale` and the one-line note that says it is used."""
    from clipsr_cli.model.weights import get_entry, resolve

    if scale not in DEFAULT_MODELS:
        raise UsageError(f"no bundled model for x{scale} (bundled: "
                         f"{', '.join(f'x{s}' for s in DEFAULT_MODELS)}); pass --weights FILE, "
                         f"--preset NAME to run an untrained preset, or drop --scale and give --outscale "
                         f"{scale}: the x4 model's output resized")
    name = DEFAULT_MODELS[scale]
    path = resolve(name, weights_dir=weights_dir)
    return path, f"no --weights: using the bundled default model {name} ({get_entry(name).description})"


def model_file(spec: Path, weights_dir=None) -> Path:
    """--weights: a generator file, a training checkpoint (its EMA weights), an
    experiment folder (its model.safetensors), or the name of a model in the
    weights manifest (`clipsr-default-x8`), resolved and verified as open_clip's
    named weights are.  None of these: an error that lists the names."""
    from clipsr_cli.model.weights import manifest, resolve

    if spec.is_dir():  # an experiment folder: the generator `clipsr train` keeps current there
        if (spec / "model.safetensors").is_file():
            return spec / "model.safetensors"
        raise UsageError(f"--weights {spec}: a folder without model.safetensors; give an experiment folder "
                         "(it has one once a checkpoint is written), a checkpoint file or a model name")
    if spec.exists():
        return spec
    models = sorted([*(name for name, entry in manifest().items() if entry.filename.startswith("clipsr-")),
                     *REAL_MODELS.values()])
    if str(spec) in REAL_MODELS.values():  # load_model takes these by name, before any file
        raise UsageError(f"--weights {spec}: a blend made at load (denoise strength {AUTO}), not a file; "
                         "`clipsr upscale --real` or clipsr.load_model runs it")
    if str(spec) in models:
        return resolve(str(spec), weights_dir=weights_dir)
    raise UsageError(f"--weights {spec}: no such checkpoint file, nor a model name (models: {', '.join(models)})")
