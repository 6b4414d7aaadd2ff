"""Process-wide memory allocator settings (no torch: the CLI applies them
before it imports anything heavy)."""

from __future__ import annotations

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
    before starting threads.  Returns False off Linux (macOS's C library has no
    mallopt, and on Windows there is no process-wide C library to ask) and where
    the C library has none (musl accepts the call and ignores it)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) for param, value in
               ((_M_MMAP_THRESHOLD, limit), (_M_TRIM_THRESHOLD, min(2 * limit, _INT_MAX)),
                (_M_ARENA_MAX, 1)))
