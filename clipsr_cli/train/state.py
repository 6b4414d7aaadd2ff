"""Nested training state (models, optimisers, RNG, counters) in one safetensors
file: tensors as tensors, everything else as JSON in the metadata.  No pickle,
so loading a checkpoint can never run code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from clipsr_cli.errors import UserError
from clipsr_cli.io.files import atomic_write

FORMAT = "clipsr-train-state"


class StateError(UserError, RuntimeError):
    pass


def _flatten(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {key}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _checksum(tree: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the state's JSON and every tensor's bytes, in key order: a file
    changed in place (same length, other bytes) no longer matches."""
    h = hashlib.sha256(tree.encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous().reshape(-1)  # 0-d tensors too
        h.update(key.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_state(path: Path, state: dict[str, Any], info: dict[str, str] | None = None) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_flatten(state, "s", tensors))
    metadata = {"format": FORMAT, "state": tree, "sha256": _checksum(tree, tensors), **(info or {})}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(state, metadata); StateError when the file is unreadable or not ours."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise StateError(f"{path}: not a clipsr training state (format {meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if "sha256" in meta and _checksum(meta["state"], tensors) != meta["sha256"]:  # older files have none
            raise StateError(f"{path}: corrupted (its contents no longer match the checksum written with it)")
        return _unflatten(json.loads(meta["state"]), tensors), meta
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise StateError(f"{path}: unreadable training state ({e})") from None
