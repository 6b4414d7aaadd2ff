"""Model configuration: presets are TOML data files, parsed strictly.

Every key a preset may hold is a field below; an unknown key is an error
(a config flag that is never read is a bug, not a feature).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipsr_cli.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(UserError, ValueError):
    pass


class UnknownKeysError(ConfigError):
    """Keys this version does not read: a typo in a file, or a checkpoint of a later version."""


@dataclass(frozen=True)
class ClipSpec:
    model: str = "ViT-B-32"  # open_clip model name
    weights: str = ""  # weights manifest entry; "" = random init (no download)
    config: str = ""  # open_clip model JSON for custom towers, relative to the preset file
    arch: str = ""  # that JSON's content, filled in on load, so checkpoints carry it
    seed: int = 0  # seed of the random init, so an untrained tower is reproducible


@dataclass(frozen=True)
class GeneratorSpec:
    base_channels: int = 64
    max_channels: int = 512
    prompt_tokens: int = 8  # deep prompt tokens, one per prompted ViT block
    # 0-based ViT blocks that get a prompt, in order; empty: the first prompt_tokens
    # blocks (what checkpoints written before this key were trained with)
    prompt_blocks: tuple[int, ...] = ()
    prompt_heads: int = 8
    iterations: int = 4  # Conv-TIFBlock refinement iterations (paper Fig. 9)
    grid: int = 8  # the encoder brings a training-size LR down to grid x grid
    hr_crop: int = 256  # training HR crop: LR size = hr_crop / scale
    global_residual: bool = True  # add bicubic(LR) to the output
    upsampler_text: bool = False  # the caption also modulates each upsampling step (TIFBlock affines)
    # channels of the upsampling steps; 0: the refiner's output width.  Narrower than the
    # refiner, the work at output resolution stays small while the LR-size network widens
    upsampler_channels: int = 0
    # convolutions per x2 upsampling step (the paper's: 1); each further one is a residual
    # conv -> caption affine -> LeakyReLU at that step's resolution, where outlines are drawn
    upsampler_convs: int = 1
    # the last x2 step's convolution gives the RGB sub-pixels directly (ESPCN's output layer):
    # no feature maps at the output's size, the costliest part of a training step at x8
    subpixel_rgb: bool = False
    affine_text: bool = True  # false: the TIFBlocks get a learned constant instead of the caption (ablation)

    @property
    def prompted_blocks(self) -> tuple[int, ...]:
        return self.prompt_blocks or tuple(range(self.prompt_tokens))


@dataclass(frozen=True)
class DiscriminatorSpec:
    blocks: tuple[int, ...] = (1, 4, 8)  # 0-based ViT blocks whose tokens D mixes
    channels: int = 512


@dataclass(frozen=True)
class StageSpec:
    text_encoder: str = "clip"
    refiner: str = "tifblock"
    upsampler: str = "pixelshuffle"
    clip_vit: bool = True  # run fused features through the frozen CLIP-ViT


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    description: str = ""
    clip: ClipSpec = field(default_factory=ClipSpec)
    generator: GeneratorSpec = field(default_factory=GeneratorSpec)
    discriminator: DiscriminatorSpec = field(default_factory=DiscriminatorSpec)
    stages: StageSpec = field(default_factory=StageSpec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str = "", origin: str = "config") -> "ModelConfig":
        sections = {"clip": ClipSpec, "generator": GeneratorSpec,
                    "discriminator": DiscriminatorSpec, "stages": StageSpec}
        top = {"name", "description", "train", *sections}  # [train]: training defaults, see preset_train_defaults
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a table of keys, got {type(data).__name__}")
        _check_keys(data, top, origin)
        kwargs: dict[str, Any] = {}
        for key in ("name", "description"):
            if key in data:
                kwargs[key] = _checked(data[key], "str", f"{origin}: {key}")
        for key, typ in sections.items():
            sub = data.get(key, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{origin}: [{key}] must be a table, not {type(sub).__name__}")
            hints = {f.name: f.type for f in dataclasses.fields(typ)}
            _check_keys(sub, set(hints), f"{origin} [{key}]")
            kwargs[key] = typ(**{k: _checked(v, hints[k], f"{origin} [{key}] {k}") for k, v in sub.items()})
        clip = kwargs["clip"]
        if clip.config and not clip.arch:
            path = Path(base_dir) / clip.config
            if not path.is_file():
                raise ConfigError(f"{origin}: clip.config file {path} is missing")
            arch = json.dumps(json.loads(path.read_text()), sort_keys=True)
            kwargs["clip"] = dataclasses.replace(clip, arch=arch)
        cfg = cls(**kwargs)
        cfg.validate(origin)
        return cfg

    def validate(self, origin: str = "config") -> None:
        g = self.generator
        if (g.iterations < 1 or g.prompt_tokens < 0 or g.base_channels < 1 or g.upsampler_channels < 0
                or g.upsampler_convs < 1):
            raise ConfigError(f"{origin}: iterations, base_channels and upsampler_convs must be >= 1, "
                              "prompt_tokens and upsampler_channels >= 0")
        b = g.prompt_blocks
        if b and (len(b) != g.prompt_tokens or min(b) < 0 or list(b) != sorted(set(b))):
            raise ConfigError(f"{origin}: prompt_blocks {list(b)} must be {g.prompt_tokens} distinct "
                              "increasing 0-based ViT block indices, one per prompt token")
        if g.grid < 1 or g.hr_crop % g.grid:
            raise ConfigError(f"{origin}: hr_crop ({g.hr_crop}) must be a multiple of grid ({g.grid})")


def _checked(value: Any, kind: str, where: str) -> Any:
    """`value` as a field of type `kind` (the annotation's text) holds it, or a
    ConfigError naming where it was read: a wrong type must not surface later
    as a TypeError deep in the network's construction."""
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool),
          "str": lambda v: isinstance(v, str),
          "tuple[int, ...]": lambda v: isinstance(v, (list, tuple))
          and all(isinstance(x, int) and not isinstance(x, bool) for x in v)}[kind]
    if not ok(value):
        raise ConfigError(f"{where}: expected {kind.replace('tuple[int, ...]', 'a list of integers')}, "
                          f"got {json.dumps(value) if isinstance(value, (str, int, float, list)) else type(value).__name__}")
    return tuple(value) if kind.startswith("tuple") else float(value) if kind == "float" else value


def _check_keys(data: dict, allowed: set[str], origin: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise UnknownKeysError(
            f"{origin}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
        )


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def preset_path(name_or_path: str) -> Path:
    """A preset TOML file by path, or the file of a registered preset by name."""
    from clipsr_cli.plugins.registry import lookup

    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.is_file()):
        path = Path(lookup("preset", name_or_path).factory)
    return path


def load_preset(name_or_path: str) -> ModelConfig:
    """A registered preset by name, or a preset TOML file by path."""
    path = preset_path(name_or_path)
    return ModelConfig.from_dict(read_toml(path), base_dir=str(path.parent), origin=str(path))


def preset_train_defaults(name_or_path: str) -> tuple[dict[str, Any], str]:
    """The preset's `[train]` table: training keys that replace TrainConfig's
    defaults for this preset (as timm's pretrained configs carry theirs), with
    the file they come from.  A config file and the command line still win."""
    path = preset_path(name_or_path)
    return read_toml(path).get("train", {}), f"{path} [train]"


SCALES = (2, 4, 8, 16)


def check_scale(scale: int) -> int:
    if scale not in SCALES:
        raise ConfigError(f"scale {scale} is not supported; choose one of {', '.join(map(str, SCALES))}")
    return scale
