"""Self-describing generator checkpoints: safetensors + metadata.

The metadata holds the full model config, the scale and the clipsr version, so
`upscale --weights FILE` needs nothing else.  The frozen CLIP is stored in the
file only when it is a random (seeded) tower that no manifest file can provide.
No pickle anywhere: safetensors cannot run code on load.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from clipsr_cli import __version__
from clipsr_cli.errors import UserError
from clipsr_cli.io.files import atomic_write
from clipsr_cli.model.config import ConfigError, ModelConfig, UnknownKeysError, check_scale

FORMAT = "clipsr-generator"
TRAIN_FORMAT = "clipsr-train-state"  # a training checkpoint (`clipsr_cli.train.state`): loadable too


class CheckpointError(UserError, RuntimeError):
    pass


def save_generator(path: str | Path, gen, extra: dict[str, str] | None = None, half: bool = False,
                   with_clip: bool = True) -> None:
    """`half`: float tensors stored as fp16 (half the file; loading casts back to fp32).
    A random (seeded) CLIP is stored unless `with_clip` is False: then loading
    rebuilds it from its seed (tests/test_weights.py checks that this gives the
    tower the bundled clean models carry, bit for bit)."""
    cfg: ModelConfig = gen.cfg
    tensors = gen.own_state_dict()
    if not cfg.clip.weights and with_clip:
        tensors.update({f"clip.{k}": v for k, v in gen.clip.state_dict().items()})
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "clipsr_version": __version__,
        "preset": cfg.name,
        "scale": str(gen.scale),
        "model_config": cfg.to_json(),
        **(extra or {}),
    }
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); it may be truncated: "
                              "copy or export it again") from None
    if meta.get("format") not in (FORMAT, TRAIN_FORMAT):
        raise CheckpointError(f"{path}: not a clipsr generator checkpoint (metadata format "
                              f"{meta.get('format')!r}, expected {FORMAT!r} or a training checkpoint)")
    if meta["format"] == TRAIN_FORMAT:  # model_config and scale are plain values of the state's top level
        try:
            top = dict(json.loads(meta["state"])["__dict__"])
            return {"format": TRAIN_FORMAT, "model_config": top["model_config"], "scale": str(top["scale"])}
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: a training checkpoint without its model config ({e})") from None
    return meta


def checkpoint_config(meta: dict[str, str], path: str | Path = "checkpoint") -> tuple[ModelConfig, int]:
    """The model config and scale a checkpoint's metadata describes, checked key
    by key against the config schema (a CheckpointError naming the file)."""
    try:
        cfg = ModelConfig.from_dict(json.loads(meta["model_config"]), origin=f"{path}: model_config")
        return cfg, check_scale(int(meta["scale"]))
    except KeyError as e:
        raise CheckpointError(f"{path}: metadata lacks {e}; not a complete clipsr checkpoint") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata model_config is not JSON ({e})") from None
    except (ValueError, ConfigError) as e:
        msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
        if isinstance(e, UnknownKeysError):  # a network this clipsr does not have: exporting again cannot help
            raise CheckpointError(f"{msg}; written by clipsr {meta.get('clipsr_version', 'of another version')} "
                                  f"(this is {__version__}): load it with the clipsr that wrote it") from None
        raise CheckpointError(f"{msg}; the checkpoint's metadata is invalid: export it again") from None


def _training_weights(path: Path) -> dict:
    """The generator weights of a training checkpoint: the EMA where it was kept
    (what `clipsr export` writes and BasicSR users pass as a model), else the raw ones."""
    from clipsr_cli.train.state import StateError, load_state

    try:
        state, _ = load_state(path)
    except StateError as e:
        raise CheckpointError(str(e)) from None
    return state["ema"] or state["gen"]


def load_generator(path: str | Path, weights_dir=None, map_location="cpu"):
    """Generator described by and loaded from a checkpoint file."""
    from safetensors.torch import load_file

    from clipsr_cli.model.clip import load_clip
    from clipsr_cli.model.generator import Generator

    path = Path(path)
    meta = read_metadata(path)
    cfg, scale = checkpoint_config(meta, path)
    if meta["format"] == TRAIN_FORMAT:
        tensors = _training_weights(path)
    else:
        try:
            tensors = load_file(str(path), device=str(map_location))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: cannot read tensors ({e}); the file may be truncated") from None
    has_clip = any(k.startswith("clip.") for k in tensors)
    clip = load_clip(cfg, weights_dir=weights_dir, pretrained=not has_clip)
    try:
        gen = Generator(cfg, clip, scale)
        result = gen.load_state_dict(tensors, strict=False)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except RuntimeError as e:  # size mismatches: the tensors are not the network the metadata describes
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise CheckpointError(f"{path}: its tensors do not fit the network its metadata describes "
                              f"({first}); export it again") from None
    clip_keys = set(gen.state_dict()) - set(gen.own_state_dict())
    missing = [k for k in result.missing_keys if k not in clip_keys]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: does not match preset {cfg.name!r} x{scale}: "
                              f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return gen.eval()
