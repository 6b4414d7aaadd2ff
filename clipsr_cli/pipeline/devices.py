"""Device choice, made once at the edge."""

from __future__ import annotations

import functools
import time

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
    return choose_precision(name, device)[0]


def choose_precision(name: str | None, device: torch.device) -> tuple[torch.dtype, str]:
    """(dtype, why).  Unset: half precision on CUDA (bf16 where supported); on
    a CPU bf16 where it has bf16 matrix instructions (AMX or AVX512-BF16) and a
    bf16 product measures faster than fp32 there, else fp32 (on other CPUs bf16
    is slower than fp32, not faster)."""
    if name is not None:
        if name not in PRECISIONS:
            raise ValueError(f"--precision {name}: choose {', '.join(PRECISIONS)}")
        if name == "fp16" and device.type == "cpu":
            raise ValueError("--precision fp16 needs a GPU (cuda or mps); use fp32 or bf16 on the CPU")
        return PRECISIONS[name], f"--precision {name}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "this GPU's default; --precision fp32 for full precision"
        return torch.float16, "this GPU has no bf16; --precision fp32 for full precision"
    if device.type != "cpu":
        return torch.float32, f"the default on {device.type}"
    return _cpu_precision()


BF16_MIN_SPEEDUP = 1.3  # bf16 must beat fp32 by this much to be chosen on its own


@functools.lru_cache(maxsize=1)
def _cpu_precision() -> tuple[torch.dtype, str]:
    units = [name for name, has in (("AMX", torch.cpu._is_amx_tile_supported()),
                                    ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported())) if has]
    if not units:
        return torch.float32, "this CPU has neither AMX nor AVX512-BF16, where bf16 runs slower than fp32"
    speedup = bf16_speedup()
    if speedup < BF16_MIN_SPEEDUP:
        return torch.float32, (f"this CPU has {' and '.join(units)} but a bf16 product ran only {speedup:.1f}x "
                               "as fast as fp32; --precision bf16 to use it anyway")
    return torch.bfloat16, (f"this CPU's {' and '.join(units)} ran a bf16 product {speedup:.1f}x faster than "
                            "fp32; --precision fp32 for full precision")


def bf16_speedup(n: int = 1024, repeats: int = 3) -> float:
    """fp32 time / bf16 time of an n^3 matrix product on this CPU's threads,
    best of `repeats` each (about 30 ms on a CPU with AMX)."""
    def best(dtype: torch.dtype) -> float:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)  # warm-up: the kernel is chosen and its code generated
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        return min(times)

    return best(torch.float32) / best(torch.bfloat16)


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
