"""Device choice, made once at the edge."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ValueError(f"--device {name}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    return device


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_precision(name: str | None, device: torch.device) -> torch.dtype:
    """Unset: half precision on CUDA (bf16 where supported), fp32 elsewhere — on
    CPUs without bf16 instructions bf16 is slower than fp32, not faster."""
    if name is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in PRECISIONS:
        raise ValueError(f"--precision {name}: choose {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type == "cpu":
        raise ValueError("--precision fp16 needs a GPU (cuda or mps); use fp32 or bf16 on the CPU")
    return PRECISIONS[name]


def pick_memory_format(device: torch.device) -> torch.memory_format:
    """Channels-last on the CPU, where oneDNN's convolutions and the upsampler's
    pixel shuffle are fastest in it (BENCHMARKS.md); the default layout elsewhere,
    where it has not been measured."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def release_cached_memory(device: torch.device) -> None:
    """Give the device's cached free blocks back (after an out-of-memory error,
    so a retry with smaller work finds them)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
