"""Training configuration: one flat dataclass, read from TOML, overridden by the CLI.

Every field is a config key *and* a `clipsr train` option (the CLI is generated
from this class, so neither can drift).  Precedence: defaults < `--config`
file < options given on the command line; an option left unset never
overrides the file.  The defaults are the paper's setting (DESIGN.md §1).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clipsr_cli.model.config import ConfigError, _check_keys, check_scale, preset_train_defaults, read_toml


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = _opt("folder", "Dataset stage: cub | coco | celeba | folder (see `clipsr plugins`).")
    data_root: str = _opt("", "Dataset root folder (its official layout; default: datasets/<dataset>).")
    captions: str = _opt("", "Captions file for --dataset folder (.json/.jsonl/.csv; else .txt sidecars).")
    val_root: str = _opt("", "Validation image folder (default: the dataset's test split).")
    val_captions: str = _opt("", "Captions file for --val-root.")
    val_images: int = _opt(100, "Validation images used at most (the first N, sorted).")
    hr_crop: int = _opt(0, "HR training crop in pixels (0: the preset's, 256 for the paper).")
    hflip: bool = _opt(True, "Random horizontal flips; a caption naming a side or a diagonal (left, rising, ...) "
                             "is mirrored with the image, one naming writing keeps the image unflipped.")
    caption_dropout: float = _opt(0.0, "Probability of training a sample with an empty caption, so that "
                                       "`upscale --missing-caption empty` gets the caption-free estimate.")
    init_weights: str = _opt("", "Generator to start from (a file or a model name such as clipsr-default-x4): "
                                 "a fine-tune, as Real-ESRGAN starts from ESRGAN's weights; ignored on --resume.")
    degradation: str = _opt("bicubic", "How the LR is made from an HR crop: bicubic (the paper's) or realistic "
                                       "(Real-ESRGAN's blur, resize, noise and JPEG), or a plugin's.")
    degradation_params: str = _opt("", "TOML file replacing keys of the degradation's parameters "
                                       "(stages/degradations/realistic.toml).")
    gt_usm: float = _opt(0.0, "Sharpen each HR crop with an unsharp mask of this weight before its LR is made "
                              "and the loss compares with it (Real-ESRGAN's gt_usm, weight 0.5; 0: off).")
    hr_rescale: tuple[float, float] = _opt((1.0, 1.0), "Show each training photo at a random scale in this range "
                                                       "before cropping: downscaled copies of large photos are "
                                                       "sharper, cleaner targets (Real-ESRGAN's multi-scale HR).")
    cache_images: bool = _opt(False, "Keep decoded training images in memory (small datasets).")
    num_workers: int = _opt(2, "Data loading worker processes (0: load in the main process).")
    # model
    preset: str = _opt("paper", "Model preset name or preset TOML path.")
    scale: int = _opt(4, "Upscaling factor: 2, 4, 8 or 16.")
    weights_dir: str = _opt("", "Folder holding manifest weights files (CLIP, VGG-19).")
    # optimisation (paper / GALIP)
    batch_size: int = _opt(16, "Images per step (per process under torchrun).")
    max_steps: int = _opt(0, "Stop after this many steps (0: run --epochs).")
    epochs: int = _opt(220, "Epochs when --max-steps is 0.")
    lr_g: float = _opt(1e-4, "Generator learning rate.")
    lr_d: float = _opt(4e-4, "Discriminator learning rate.")
    lr_schedule: str = _opt("constant", "constant | cosine (both learning rates decay to 0 at the last step).")
    beta1: float = _opt(0.0, "Adam beta1.")
    beta2: float = _opt(0.9, "Adam beta2.")
    l1_weight: float = _opt(1.0, "Weight of L1(SR, HR).")
    mse_weight: float = _opt(0.0, "Weight of MSE(SR, HR), the loss PSNR measures.")
    perceptual_weight: float = _opt(1.0, "Weight of the VGG-19 perceptual loss (0: off, no VGG needed).")
    perceptual_layers: tuple[float, float, float, float, float] = _opt(
        (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), "Weights of VGG-19 relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.")
    adversarial_weight: float = _opt(0.01, "lambda_adv of the generator's adversarial term (0: no discriminator).")
    pixel_adversarial_weight: float = _opt(0.0, "Weight of a U-Net texture critic's per-pixel GAN loss "
                                                "(Real-ESRGAN's, 0.1; trained from scratch, no download; 0: off).")
    pixel_disc_channels: int = _opt(64, "Width of the U-Net texture critic (Real-ESRGAN's 64).")
    clip_alpha: float = _opt(4.0, "alpha: weight of cos(CLIP_img(SR), CLIP_txt(T)) in the adversarial term.")
    magp_weight: float = _opt(2.0, "Weight of the matching-aware gradient penalty (MA-GP).")
    magp_power: float = _opt(6.0, "Power of the gradient norm in MA-GP.")
    ema_decay: float = _opt(0.999, "EMA decay of the generator weights (0: no EMA); step t uses "
                                   "min(decay, (1 + t) / (10 + t)), so a short run's EMA does not lag its start.")
    max_bad_steps: int = _opt(10, "Stop after this many non-finite steps in a row.")
    seed: int = _opt(0, "Seed of initialisation, data order and augmentation.")
    # devices
    device: str = _opt("auto", "auto | cpu | cuda[:N] | mps (under torchrun: cuda:LOCAL_RANK).")
    precision: str = _opt("fp32", "fp32 | bf16 | fp16 (autocast; fp16 uses a gradient scaler, CUDA only).")
    threads: int = _opt(0, "CPU threads of the training process (0: PyTorch's default, one per core).")
    # experiment
    exp_dir: str = _opt("", "Experiment folder: config, checkpoints, samples, logs "
                            "(default: experiments/<dataset>-<preset>-x<scale>).")
    resume: bool = _opt(False, "Continue from the latest valid checkpoint in --exp-dir.")
    log_every: int = _opt(10, "Steps between metric lines.")
    sample_every: int = _opt(500, "Steps between LR | SR | HR sample grids (0: never).")
    val_every: int = _opt(1000, "Steps between validations (0: only at the end).")
    checkpoint_every: int = _opt(1000, "Steps between checkpoints (and at the end).")
    keep_checkpoints: int = _opt(3, "Checkpoints kept (older ones are deleted).")
    tensorboard: bool = _opt(True, "Also write TensorBoard events when tensorboard is installed.")

    def with_default_folders(self) -> "TrainConfig":
        """Unset folders as BasicSR lays them out, relative to where train runs:
        the data in datasets/<dataset>, the run in experiments/<name>, so that
        `clipsr train --dataset cub` (and the same with --resume) needs no more."""
        name = f"{self.dataset}-{Path(self.preset).stem}-x{self.scale}"
        return dataclasses.replace(self, data_root=self.data_root or f"datasets/{self.dataset}",
                                   exp_dir=self.exp_dir or f"experiments/{name}")

    def validate(self) -> "TrainConfig":
        check_scale(self.scale)
        if not self.exp_dir or not self.data_root:
            raise ConfigError("train needs --exp-dir and --data-root (or exp_dir and data_root in the config file)")
        if not Path(self.data_root).is_dir():
            default = " (the default for this --dataset)" if self.data_root == f"datasets/{self.dataset}" else ""
            raise ConfigError(f"--data-root {self.data_root}: no such folder{default}; put the {self.dataset!r} "
                              "dataset there in its official layout, or pass --data-root where it is")
        if self.batch_size < 1 or self.max_steps < 0 or self.epochs < 1:
            raise ConfigError("batch_size and epochs must be >= 1, max_steps >= 0")
        if self.gt_usm < 0:
            raise ConfigError(f"gt_usm {self.gt_usm} must be >= 0 (0: no sharpening; Real-ESRGAN's is 0.5)")
        if not 0.0 < self.hr_rescale[0] <= self.hr_rescale[1]:
            raise ConfigError(f"hr_rescale {list(self.hr_rescale)}: give [low, high] with 0 < low <= high")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"caption_dropout {self.caption_dropout} must be in [0, 1)")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule {self.lr_schedule!r}: choose constant or cosine")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision {self.precision!r}: choose fp32, bf16 or fp16")
        if self.pixel_adversarial_weight < 0 or self.pixel_disc_channels < 1:
            raise ConfigError("pixel_adversarial_weight must be >= 0 and pixel_disc_channels >= 1")
        if self.pixel_adversarial_weight and self.hr_crop % 8:
            raise ConfigError(f"hr_crop {self.hr_crop}: the texture critic needs a multiple of 8")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay {self.ema_decay} must be in [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        lines = []
        for k, v in self.to_dict().items():
            lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "train config") -> "TrainConfig":
        return cls(**_checked(data, origin))


def _checked(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """Known keys only, each of its field's type (ints accepted for floats)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    _check_keys(data, set(fields), origin)
    out = {}
    for key, value in data.items():
        default = fields[key].default
        if isinstance(value, list):
            value = tuple(float(v) if isinstance(v, int) else v for v in value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default) or (isinstance(value, tuple) and len(value) != len(default)):
            raise ConfigError(f"{origin}: {key} = {value!r} should be like {default!r}")
        out[key] = value
    return out


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)  # repr round-trips exactly
    return json.dumps(v)


def resolve_config(config_file: Optional[Path], overrides: dict[str, Any],
                   base: Optional[TrainConfig] = None) -> TrainConfig:
    """defaults < the preset's [train] table < keys present in the config file <
    overrides that are not None; with `base` (a resumed run's saved config, which
    holds its preset's defaults already) in place of the first two."""
    given = {}
    if config_file is not None:
        if not Path(config_file).is_file():
            raise ConfigError(f"--config {config_file}: no such file")
        given = _checked(read_toml(Path(config_file)), str(config_file))
    given |= {k: v for k, v in overrides.items() if v is not None}
    cfg = base or with_preset_defaults(given.get("preset", TrainConfig.preset))
    return dataclasses.replace(cfg, **given)


def with_preset_defaults(preset: str) -> TrainConfig:
    """TrainConfig's defaults with the preset's own training defaults over them."""
    defaults, origin = preset_train_defaults(preset)
    if "preset" in defaults:
        raise ConfigError(f"{origin}: a preset's training defaults cannot name a preset")
    return TrainConfig(preset=preset, **_checked(defaults, origin))


# Keys a resumed run cannot change: they fix the model or the data order.
FIXED_ON_RESUME = ("preset", "scale", "hr_crop", "seed", "batch_size", "dataset", "degradation", "degradation_params",
                   "pixel_disc_channels")


def run_config(config_file: Optional[Path], overrides: dict[str, Any]) -> TrainConfig:
    """The config of a `train` invocation.  With --resume the experiment's saved
    config is the base, so only what is given again changes."""
    cfg = resolve_config(config_file, overrides).with_default_folders()
    saved_path = Path(cfg.exp_dir) / "config.toml"
    if cfg.resume and saved_path.is_file():
        saved = TrainConfig.from_dict(read_toml(saved_path), origin=str(saved_path))
        cfg = resolve_config(config_file, overrides, base=saved).with_default_folders()
        changed = [k for k in FIXED_ON_RESUME if getattr(cfg, k) != getattr(saved, k)]
        if changed:
            raise ConfigError(f"--resume cannot change {', '.join(changed)} (saved in {saved_path}); "
                              "start a new --exp-dir instead")
        cfg = dataclasses.replace(cfg, resume=True)
    return cfg.validate()
