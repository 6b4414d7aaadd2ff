"""CUDA graphs of the generator's forward pass, one per input shape.

On a GPU the small presets are launch-bound: a forward pass is ~300 kernels,
each launched by Python, and each launch lets go of the GIL and has to win it
back from the decoding and writing threads (BENCHMARKS.md, "On a GPU").  A
graph replays the whole pass as one launch.  A shape is captured the second
time it is seen (a folder of many sizes pays nothing for sizes seen once), at
most `max_graphs` shapes are kept, and a capture that fails (a plugin stage
that synchronises with the host, say) turns graphs off for the run with one
warning: the eager pass gives the same result.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict
from typing import Callable

import torch


class GraphedForward:
    """fn(x, cond) -> y on CUDA, replayed from captured graphs where it can be.

    `__call__` returns a device tensor that the next call overwrites: copy it
    off first (upscale copies it to the host at once)."""

    def __init__(self, fn: Callable, warn: Callable[[str], None] = print, capture_at: int = 2, max_graphs: int = 4):
        self.fn = fn
        self.warn = warn
        self.capture_at = capture_at
        self.max_graphs = max_graphs
        self.enabled = True
        self._seen: Counter = Counter()
        self._graphs: OrderedDict = OrderedDict()  # key -> (graph, static x, static cond, static out)

    def __call__(self, x: torch.Tensor, cond) -> torch.Tensor:
        if not self.enabled:
            return self.fn(x, cond)
        key = (tuple(x.shape), x.dtype, tuple(tuple(t.shape) for t in _tensors(cond)))
        entry = self._graphs.get(key)
        if entry is None:
            self._seen[key] += 1
            if self._seen[key] < self.capture_at:
                return self.fn(x, cond)
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)  # the least recently used, before a new pool is taken
            entry = self._capture(x, cond)
            if entry is None:
                return self.fn(x, cond)
            self._graphs[key] = entry
        self._graphs.move_to_end(key)
        graph, static_x, static_cond, out = entry
        static_x.copy_(x, non_blocking=True)
        for dst, src in zip(_tensors(static_cond), _tensors(cond)):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        return out

    def _capture(self, x: torch.Tensor, cond):
        """(graph, static x, static cond, static output) for x's shape, or None
        after turning graphs off."""
        static_x = x.clone()
        static_cond = dataclasses.replace(cond, **{f.name: getattr(cond, f.name).clone()
                                                   for f in dataclasses.fields(cond)})
        graph = torch.cuda.CUDAGraph()
        try:
            # streams belong to a device: x's (cuda:1 under torchrun's second
            # process), not the thread's current one, which stays cuda:0
            with torch.cuda.device(x.device):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # libraries set up their handles outside the capture
                    self.fn(static_x, static_cond)
                torch.cuda.current_stream().wait_stream(side)
                with torch.cuda.graph(graph):
                    out = self.fn(static_x, static_cond)
        except torch.OutOfMemoryError:
            raise  # upscale's retry halves the batch or the tile
        except RuntimeError as e:
            if "out of memory" in str(e):
                raise
            self.enabled = False
            self._graphs.clear()
            self.warn(f"CUDA graphs off for this run (capture failed: {str(e).splitlines()[0]}); "
                      "continuing with the same forward pass, launched op by op")
            return None
        return graph, static_x, static_cond, out

    @property
    def shapes(self) -> int:
        """Graphs held now."""
        return len(self._graphs)


def _tensors(cond) -> list[torch.Tensor]:
    return [getattr(cond, f.name) for f in dataclasses.fields(cond)]
