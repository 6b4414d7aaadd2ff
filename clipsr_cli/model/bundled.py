"""The bundled models: the default for each scale, and model names accepted
wherever a checkpoint file is (`--weights clipsr-default-x8`)."""

from __future__ import annotations

from pathlib import Path

import torch

from clipsr_cli.errors import UsageError

DEFAULT_MODELS = {4: "clipsr-default-x4", 8: "clipsr-default-x8"}  # weights manifest names
# For compressed, noisy photos.  The denoise models are the clean ones fine-tuned on
# Real-ESRGAN's degradations (the same preset and scale, so weights can be blended);
# the real models (`--real`) are the half-way blend of the two, Real-ESRGAN's default
# denoise strength (benchmarks/real_blend.py writes them; BENCHMARKS.md says why).  A scale
# with a denoise model but no stored real one (x8: the 25 MB budget of bundled weights)
# makes that blend when it loads, as --denoise-strength does.
REAL_STRENGTH = 0.5
REAL_MODELS = {4: "clipsr-default-real-x4"}
DENOISE_MODELS = {4: "clipsr-default-real-denoise-x4", 8: "clipsr-default-real-denoise-x8"}


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
    models = sorted(name for name, entry in manifest().items() if entry.filename.startswith("clipsr-"))
    if str(spec) in models:
        return resolve(str(spec), weights_dir=weights_dir)
    raise UsageError(f"--weights {spec}: no such checkpoint file, nor a model name (models: {', '.join(models)})")
