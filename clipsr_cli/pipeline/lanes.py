"""Several batches in flight at once, each carried from forward pass to written
files by its own worker thread (a lane); results come back in submission order.

On the CPU the cores are shared out between the lanes (`torch_threads` intra-op
threads each).  Two lanes of one thread beat one lane of two on this 2-core
machine: a single-threaded forward has no barrier at which to wait for a
thread that decoding or encoding has pushed off its core, small ops scale
poorly across threads anyway, and one lane's encoding fills the other's gaps
(BENCHMARKS.md).  On an accelerator the caller's thread launches the forward
passes and the lanes only quantise, encode and write: CPU work overlapping the
device's, while the device keeps the one thread whose library handles are warm.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch


class Lanes:
    """`n` worker threads; with n == 1 work runs inline in the caller.

    `submit(fn, on_done)` runs fn() in a lane; on_done(result, error) is then
    called in the caller's thread, in submission order, once the work is done:
    the caller's own state (reports, progress bars) needs no locks.  At most
    n + 1 units are in flight, so a free lane always finds the next one waiting.
    """

    def __init__(self, n: int, torch_threads: int | None = None):
        self.n = max(1, n)
        self._restore = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(max_workers=self.n, thread_name_prefix="clipsr-lane",
                                        initializer=_set_threads, initargs=(torch_threads,)) if self.n > 1 else None
        self._flight: deque[tuple[Future, Callable]] = deque()

    def submit(self, fn: Callable[[], object], on_done: Callable[[object, Exception | None], None]) -> None:
        if self._pool is None:
            self.run_alone(fn, on_done)
            return
        self._flight.append((self._pool.submit(fn), on_done))
        while len(self._flight) > self.n + 1:
            self._complete_oldest()

    def run_alone(self, fn: Callable[[], object], on_done: Callable[[object, Exception | None], None]) -> None:
        """Wait for every lane, then run fn in the caller with all its threads:
        for work that needs the whole machine's memory (a tiled image)."""
        self.drain()
        try:
            result = fn()
        except Exception as e:
            on_done(None, e)
        else:
            on_done(result, None)

    def _complete_oldest(self) -> None:
        fut, on_done = self._flight[0]
        error = fut.exception()  # an interrupt here leaves it in flight, for stop() to report
        self._flight.popleft()
        on_done(None if error else fut.result(), error)

    def drain(self) -> None:
        while self._flight:
            self._complete_oldest()

    def close(self) -> None:
        """Wait for all work and report it."""
        try:
            self.drain()
        finally:
            self._shut(wait=True)

    def cancel(self) -> None:
        """Drop work not yet started and report nothing more (on an error):
        work already running finishes in the background (its writes are atomic)."""
        self._flight.clear()
        self._shut(wait=False)

    def stop(self) -> None:
        """Drop work not yet started; wait for the work already running and report
        it (on Ctrl-C or a full disk): what is on disk is then what was reported."""
        flight, self._flight = self._flight, deque()
        for fut, on_done in flight:
            if not fut.cancel():  # running or done: its files are being written
                error = fut.exception()
                on_done(None if error else fut.result(), error)
        self._shut(wait=True)

    def _shut(self, wait: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            # torch keeps the last thread count set anywhere as the default of
            # threads that start later; give them the caller's again
            torch.set_num_threads(self._restore)


def _set_threads(n: int | None) -> None:
    if n is not None:
        torch.set_num_threads(n)  # intra-op threads of this lane only


def default_lanes(device: torch.device) -> tuple[int, int | None]:
    """(lanes, intra-op threads per lane) for upscaling on `device`."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        n = 2 if threads >= 2 else 1
        return n, threads // n
    # writers only (the device is driven from the caller); 2, 4 and 8 measured
    # alike on an H100 with 16 cores, the host's Python work being the limit (BENCHMARKS.md)
    return min(4, max(2, (os.cpu_count() or 2) // 2)), None
