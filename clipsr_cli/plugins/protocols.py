"""What each kind of stage must be: the whole contract a plugin author needs.

`hookspecs.py` says how a plugin registers a stage (``register(name, value)``);
this module says what `value` is for each kind, and what the objects it builds
offer.  The generator, the trainer and `score` use nothing else of a stage.

    kind            registered value                          builds
    text_encoder    TextEncoderFactory(cfg, clip)             TextEncoder
    refiner         RefinerFactory(cfg, clip, scale)          Refiner
    upsampler       UpsamplerFactory(cfg, scale, in_ch, text_dim)  Upsampler
    metric          a Metric                                  -
    dataset         DatasetFactory(root, split, captions)     list[Record]
    caption_source  CaptionReader(path)                       {relpath: [captions]}
    degradation     DegradationFactory(params | None)         Degradation
    preset          path of a TOML file (str)                 -
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    import numpy as np


# --- text ---------------------------------------------------------------------
@dataclass
class TextFeatures:
    """Frozen-encoder output for a batch of captions (cacheable per caption)."""

    sentence: torch.Tensor  # (B, E)
    tokens: torch.Tensor  # (B, L, W_text)
    pad_mask: torch.Tensor  # (B, L), True where there is no token


@dataclass
class TextCondition:
    """What the refiner and upsampler consume: sentence vector and deep prompt tokens."""

    sentence: torch.Tensor  # (B, embed_dim)
    prompts: torch.Tensor  # (B, n_prompts, W_vision)


@runtime_checkable
class TextEncoder(Protocol):
    """Captions -> TextFeatures (frozen, cacheable) -> TextCondition (trainable)."""

    embed_dim: int  # width of TextCondition.sentence
    # True when TextFeatures.sentence is the frozen CLIP's sentence embedding,
    # so the discriminator may reuse it instead of running the text tower again
    clip_sentence: bool

    def n_tokens(self, caption: str) -> int: ...
    def encode(self, captions: list[str]) -> TextFeatures: ...
    def __call__(self, feats: TextFeatures) -> TextCondition: ...


# --- image path -----------------------------------------------------------------
@runtime_checkable
class Refiner(Protocol):
    """LR image + condition -> LR-size feature map (B, out_channels, H, W)."""

    multiple: int  # input sides must be multiples of this (the generator pads)
    out_channels: int

    def __call__(self, lr: torch.Tensor, cond: TextCondition) -> torch.Tensor: ...


@runtime_checkable
class Upsampler(Protocol):
    """Features (None when `uses_features` is False) + LR + sentence -> SR image.

    `sentence` is None unless the upsampler was built with a `text_dim`."""

    uses_features: bool

    def __call__(self, features: torch.Tensor | None, lr: torch.Tensor,
                 sentence: torch.Tensor | None = None) -> torch.Tensor: ...


TextEncoderFactory = Callable[[Any, torch.nn.Module], TextEncoder]
RefinerFactory = Callable[[Any, torch.nn.Module, int], Refiner]
# text_dim: the sentence width when the preset asks the upsampler to fuse the caption, else None
UpsamplerFactory = Callable[[Any, int, int, "int | None"], Upsampler]


# --- metrics --------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A registered metric.  One call signature for every metric:

        fn(sr, ref, crop_border, captions) -> (B,) tensor

    sr, ref: (B, 3, H, W) in [0, 1] (ref None for no-reference metrics);
    captions: one list of captions per image (None when there are none).
    A set-level metric (FID) returns per-image statistics instead, and
    `reduce(list of those) -> float` gives the folder's one value.
    """

    name: str
    fn: Callable[[torch.Tensor, "torch.Tensor | None", int, "list[list[str]] | None"], torch.Tensor]
    lower_better: bool
    range: str
    description: str
    needs_reference: bool = True
    needs_captions: bool = False
    reduce: Callable[[list[torch.Tensor]], float] | None = None
    options: tuple[str, ...] = ()  # keyword options of fn a user may set (clip_score: preset)

    @property
    def set_level(self) -> bool:
        return self.reduce is not None

    @property
    def direction(self) -> str:
        return "lower" if self.lower_better else "higher"

    def with_options(self, **values: Any) -> "Metric":
        """This metric with some of its `options` fixed (unset ones keep fn's defaults)."""
        unknown = set(values) - set(self.options)
        if unknown:
            raise ValueError(f"metric {self.name!r} has no option {', '.join(sorted(unknown))}; "
                             f"options: {', '.join(self.options) or 'none'}")
        return dataclasses.replace(self, fn=functools.partial(self.fn, **values))

    def __call__(self, sr: torch.Tensor, ref: torch.Tensor | None = None, crop_border: int = 0,
                 captions: list[list[str]] | None = None) -> torch.Tensor:
        return self.fn(sr, ref, crop_border, captions)


# --- data -----------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """One training image and its captions."""

    path: Path
    captions: tuple[str, ...]
    box: tuple[int, int, int, int] | None = None  # crop (left, top, right, bottom) before sampling


@runtime_checkable
class Degradation(Protocol):
    """HR crop -> LR, as training sees it.  Every random choice comes from `rng`
    (seeded from (seed, epoch, index) by the data loader), so a resumed run draws
    the same LR for the same sample."""

    def __call__(self, hr: torch.Tensor, scale: int, rng: "np.random.Generator") -> torch.Tensor:
        """(3, H, W) float in [0, 1] -> (3, H // scale, W // scale) float in [0, 1]."""


# params: a TOML file of the degradation's parameters (None: its shipped defaults)
DegradationFactory = Callable[["Path | None"], Degradation]


# split is "train" or "test"; captions an optional captions file the user passed
DatasetFactory = Callable[[Path, str, "Path | None"], "list[Record]"]
CaptionReader = Callable[[Path], "dict[str, list[str]]"]


def check_registered(kind: str, name: str, value: Any, plugin: str) -> None:
    """Refuse, at registration, a value that cannot be what `kind` needs."""
    ok = {"metric": lambda v: isinstance(v, Metric),
          "preset": lambda v: isinstance(v, (str, Path))}.get(kind, callable)(value)
    if not ok:
        want = {"metric": "a clipsr_cli.plugins.protocols.Metric", "preset": "a path to a TOML file"}
        raise TypeError(f"plugin {plugin} registers {kind} {name!r} as {type(value).__name__}; "
                        f"a {kind} must be {want.get(kind, 'a factory (callable)')}")
