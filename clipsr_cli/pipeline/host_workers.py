"""Decoding and writing in worker processes, for an accelerator's host.

On an accelerator the main thread launches the forward passes while threads
decode, encode and write; they all take turns at the one GIL, so the device
waits (on an H100 the main thread spent 26% of its time waiting for decoded
images, and end to end reached 18-22% of the forward pass, BENCHMARKS.md).
Processes have an interpreter each, but every image then crosses a pipe: on
a 2-core host threads were faster (BENCHMARKS.md), so processes are used
where the host has cores to spare.  The main process keeps the order, the
report and the decisions (skip, fail, stop); a worker only decodes one file
or writes one output, atomically as before.  On the CPU the cores compute the
forward passes themselves, and the threads stay (measured faster there).

Workers start from a fork server that has imported this module once (a fork
of the main process would copy its CUDA context and thread pools in an
unusable state), ignore Ctrl-C (the main process decides what finishes), and
run one intra-op thread each.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from clipsr_cli.io.images import Decoded, load_image, write_image
from clipsr_cli.pipeline.prefetch import outcome

MIN_IMAGES = 64  # a smaller run ends before the workers' start (importing torch) pays off
MIN_CORES = 8  # 2 cores: threads 535 img/s, 2 + 2 processes 453 (no-op network; BENCHMARKS.md)


def worker_counts(cores: int | None = None) -> tuple[int, int]:
    """(decoding, writing) processes: the cores but two (the main thread and the
    device's driver), shared out, at most 8 each."""
    spare = max(2, (cores or os.cpu_count() or 2) - 2)
    return min(8, max(1, spare // 2)), min(8, max(1, spare - spare // 2))


class HostWorkers:
    """Two pools of worker processes: one decodes inputs, one writes outputs."""

    def __init__(self, decoders: int, writers: int):
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload([__name__])  # torch imported once, in the server
        self.decoders, self.writers = decoders, writers
        self._decode = ProcessPoolExecutor(decoders, mp_context=ctx, initializer=_worker_setup)
        self._write = ProcessPoolExecutor(writers, mp_context=ctx, initializer=_worker_setup)

    @classmethod
    def for_run(cls, device: torch.device, images: int, cores: int | None = None) -> "HostWorkers | None":
        """Workers for a run of `images` inputs on `device`, or None (threads do it)."""
        if device.type == "cpu" or images < MIN_IMAGES or (cores or os.cpu_count() or 1) < MIN_CORES:
            return None
        return cls(*worker_counts(cores))

    def describe(self) -> str:
        return f"{self.decoders} decoding + {self.writers} writing processes"

    def decode(self, path: Path) -> Future:
        """A future of `load_image(path)` made in a worker: its Decoded (numpy
        arrays; `as_tensors` makes it torch's again), or the exception it raised."""
        return self._decode.submit(_decode, path)

    def write(self, path: Path, arr: np.ndarray) -> Future:
        """A future of `write_image(path, arr)` run in a worker (its error raised by result())."""
        return self._write.submit(write_image, path, arr)

    def close(self, wait: bool = True) -> None:
        for pool in (self._decode, self._write):
            pool.shutdown(wait=wait, cancel_futures=True)


def as_tensors(decoded: Decoded | Exception) -> Decoded | Exception:
    """A worker's Decoded with torch tensors again (no copy)."""
    if isinstance(decoded, Exception):
        return decoded
    alpha = None if decoded.alpha is None else torch.from_numpy(decoded.alpha)
    return replace(decoded, rgb=torch.from_numpy(decoded.rgb), alpha=alpha)


def _decode(path: Path) -> Decoded | Exception:
    """In a worker: the decoded image as numpy arrays (they cross the pipe as
    bytes; torch tensors would each go through a shared-memory file), or the
    exception, returned so that one bad file does not end the run."""
    d = outcome(load_image, path)
    if isinstance(d, Exception):
        return d
    return replace(d, rgb=d.rgb.numpy(), alpha=None if d.alpha is None else d.alpha.numpy())


def _worker_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
