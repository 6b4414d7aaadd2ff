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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters
_INT_MAX = 2**31 - 1  # mallopt takes a C int


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Let glibc reuse freed blocks of up to `limit` bytes instead of unmapping them.

    By default glibc gives every block over 32 MiB back to the kernel on free,
    so each forward pass page-faults its 100+ MiB activation maps in again
    (zero-filled by the kernel), which cost 12% of the paper preset's forward
    time on the CPU.  Freed memory is then kept by the process for its next
    batch, which is what a batch tool wants.  One arena for all threads: the
    per-thread arenas of worker threads (upscale's lanes) hold at most 64 MiB
    per block and map anything larger afresh on every allocation.  Call it
    before starting threads.  Returns False where the C library has no mallopt
    (macOS, musl ignores it)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) for param, value in
               ((_M_MMAP_THRESHOLD, limit), (_M_TRIM_THRESHOLD, min(2 * limit, _INT_MAX)),
                (_M_ARENA_MAX, 1)))
