"""One run's model runner: the generator on a device and dtype, the per-caption
text cache, batching limits, tiling with out-of-memory retries, outscale."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from clipsr_cli.model.clip import MAX_CAPTION_TOKENS
from clipsr_cli.pipeline.devices import pick_memory_format, release_cached_memory
from clipsr_cli.pipeline.graphs import GraphedForward
from clipsr_cli.pipeline.tiling import (
    auto_batch,
    auto_tile,
    host_memory_shortfall,
    is_out_of_memory,
    output_host_bytes,
    tiled,
)


class Upscaler:
    """Holds the generator, the per-caption text cache and the tiling policy of one run.

    `tile`: LR tile side (0: never tile; None: automatic, from free memory);
    `tile_pad`: LR pixels of overlap on each interior side of a tile;
    `cuda_graphs`: on CUDA, replay untiled forward passes from graphs (graphs.py);
    `outscale`: the output's size over the input's when not the network's
    scale (Real-ESRGAN's --outscale): the network's output is resized to it.
    """

    def __init__(self, gen, device: torch.device, warn: Callable[[str], None] = print,
                 dtype: torch.dtype = torch.float32, tile: int | None = None, tile_pad: int = 16,
                 cuda_graphs: bool = True, outscale: float | None = None):
        self.layout = pick_memory_format(device)
        # bf16 on a CPU: the weights cast once (autocast casts each of them at every
        # call: the paper preset ran slower than in fp32 so on an AMX Xeon, BENCHMARKS.md);
        # elsewhere computed under autocast from fp32 weights.  Outputs are fp32.
        weights = dtype if device.type == "cpu" and dtype == torch.bfloat16 else None
        self.gen = gen.to(device, weights, memory_format=self.layout).eval()
        self.device = device
        self.dtype = dtype
        self.warn = warn
        self.tile_pad = tile_pad
        self.tile = tile if tile is not None else auto_tile(self.bytes_per_lr_pixel(), device)
        self.outscale = outscale if outscale is not None and outscale != gen.scale else None
        self._text: dict[str, object] = {}
        self._batches: dict[tuple[int, int], int] = {}
        self.batch_cap = 1 << 30  # lowered on out-of-memory
        self._tokens: dict[str, int] = {}
        self._text_lock = threading.Lock()
        # upscale.run: the CPU's lanes each compute on their own cores; an
        # accelerator is driven from the caller's thread and lanes only write
        self.forward_in_lanes = device.type == "cpu"
        # callers on several threads: an accelerator runs one batch at a time
        # (memory bound of one batch)
        self._device_lock = threading.Lock() if device.type != "cpu" else contextlib.nullcontext()
        self._net = GraphedForward(self._eager, warn) if cuda_graphs and device.type == "cuda" else self._eager

    def bytes_per_lr_pixel(self) -> float:
        """A generous bound on activation memory per LR pixel: the upsampler's
        widest maps (4 x base channels at up to scale^2 pixels each), a few alive at once."""
        return 4.0 * 4 * self.gen.cfg.generator.base_channels * self.gen.scale**2 * 1.5

    def check_caption(self, caption: str, image: Path) -> None:
        """Warn, naming the image, when its caption is truncated: once per
        caption (a long `--caption` would otherwise give a line per image)."""
        if caption in self._tokens:
            return
        self._tokens[caption] = self.gen.text.n_tokens(caption)
        if self._tokens[caption] > MAX_CAPTION_TOKENS:
            self.warn(f"{image}: caption longer than CLIP's {MAX_CAPTION_TOKENS} tokens was truncated "
                      f"({self._tokens[caption]} tokens; said once per caption, for its first image)")

    def conditions(self, captions: list[str]):
        """The batched text condition of `captions`.  Each unique caption is
        encoded once per run; the new ones of a batch in one call (the text
        tower runs on their longest length).  Lanes may race to encode the same
        caption first: both get the same result, one is kept."""
        with self._text_lock:
            new = [c for c in dict.fromkeys(captions) if c not in self._text]
        if new:
            encoded = split_conditions(self.gen.encode_text(new))
            with self._text_lock:
                for caption, cond in zip(new, encoded):
                    self._text.setdefault(caption, cond)
        with self._text_lock:
            return cat_conditions([self._text[c] for c in captions])

    def batch_limit(self, lr: torch.Tensor, requested: int | None) -> int:
        """Images of lr's size per forward pass: one when it is tiled (its tiles
        already fill the device, and the automatic tile is chosen for one image's
        activations), else the requested number (None: `auto_batch`), at most
        what has not run out of memory."""
        if self.is_tiled(lr):
            return 1
        return min(requested or self.auto_batch(lr), self.batch_cap)

    def auto_batch(self, lr: torch.Tensor) -> int:
        """Images of lr's size per forward pass when no batch size is given."""
        size = tuple(lr.shape[-2:])
        if size not in self._batches:  # free memory is read once per size
            self._batches[size] = auto_batch(self.bytes_per_lr_pixel(), size[0] * size[1], self.gen.scale,
                                             self.device)
        return self._batches[size]

    def output_host_bytes(self, decoded) -> int:
        """Host memory the output of a decoded image takes (`tiling.output_host_bytes`):
        a tiled one is made band by band as its tiles finish, unless it is
        resized (`outscale`): then its whole float canvas comes first."""
        h, w = self.output_size(decoded.rgb)
        if self.outscale is not None:
            net_h, net_w = (self.gen.scale * n for n in decoded.rgb.shape[-2:])
            return output_host_bytes(h, w, decoded.alpha is not None, decoded.bits) + net_h * net_w * 3 * 4
        band = min(h, (self.tile + 2 * self.tile_pad) * self.gen.scale) if self.is_tiled(decoded.rgb) else None
        return output_host_bytes(h, w, decoded.alpha is not None, decoded.bits, band)

    def memory_refusal(self, decoded) -> str | None:
        """Why the output of a decoded image cannot be made in the host's free
        memory (refused, rather than the run killed for memory), or None."""
        shortfall = host_memory_shortfall(self.output_host_bytes(decoded))
        if shortfall is None:
            return None
        (h, w), (need, free) = self.output_size(decoded.rgb), (f"{n / 2**30:.1f} GiB" for n in shortfall)
        return f"its {w}x{h} output needs about {need} of memory and {free} is free; " \
               "upscale it in parts or at a smaller --scale or --outscale"

    def output_size(self, lr: torch.Tensor) -> tuple[int, int]:
        """(height, width) of lr's output: the network's scale, or `outscale`'s."""
        return self._output_size(*lr.shape[-2:])

    def _output_size(self, h: int, w: int) -> tuple[int, int]:
        if self.outscale is None:
            return self.gen.scale * h, self.gen.scale * w
        # Real-ESRGAN's size, int(side * outscale), without float error (100 * 2.3 is 229.99...)
        return max(1, math.floor(h * self.outscale + 1e-6)), max(1, math.floor(w * self.outscale + 1e-6))

    def resized(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) network-scale float output (or upscaled alpha) at the output
        size: bicubic, antialiased where it shrinks (PIL's way, not aliasing)."""
        size = self._output_size(x.shape[-2] // self.gen.scale, x.shape[-1] // self.gen.scale)
        if tuple(x.shape[-2:]) == size:
            return x
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        return F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False, antialias=shrink)

    def upscale_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """(1, H, W) alpha in [0, 1] at the output's size: bicubic, apart from the network."""
        return self.resized(F.interpolate(alpha[None], scale_factor=self.gen.scale, mode="bicubic"))[0].clamp(0, 1)

    def is_tiled(self, lr: torch.Tensor) -> bool:
        return bool(self.tile) and max(lr.shape[-2:]) > self.tile

    def _eager(self, x: torch.Tensor, cond) -> torch.Tensor:
        # no autocast weight cache: a graph capture must not keep casts made outside it
        autocast = self.dtype != torch.float32 and self.device.type != "cpu"
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast, cache_enabled=False):
            return self.gen(x, cond)

    def _forward(self, lr: torch.Tensor, cond, as_uint8: bool, finish=None) -> torch.Tensor:
        def on_device(x: torch.Tensor) -> torch.Tensor:
            return x.to(self.device, memory_format=self.layout)

        if self.is_tiled(lr):  # eager: a graph's memory pool per tile shape would outlive the tile
            if finish is None and as_uint8:  # quantised band by band: never whole in float
                finish = lambda band, top: quantise(band.clamp_(0, 1))  # noqa: E731
            forward = lambda part: self._eager(on_device(part), cond)  # noqa: E731
            if self.outscale is not None:  # resized whole: bands resized apart would show seams
                out = self.resized(tiled(forward, lr, self.gen.scale, self.tile, self.tile_pad))
                return finish(out, 0) if finish is not None else out.clamp_(0, 1)
            out = tiled(forward, lr, self.gen.scale, self.tile, self.tile_pad, finish)
            return out if finish is not None else out.clamp_(0, 1)
        out = self._net(on_device(lr), cond)
        out = (self.resized(out) if self.outscale is not None else out).clamp_(0, 1)
        # copied off at once (a graph's output is overwritten by its next replay); quantised
        # on the device, a quarter of the bytes cross to the host
        return quantise(out).cpu() if as_uint8 else out.float().cpu()

    @torch.inference_mode()
    def upscale_batch(self, rgbs: list[torch.Tensor], captions: list[str], as_uint8: bool = False,
                      finish: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
        """Same-size images (CPU), one caption each -> (B, 3, sH, sW) float on the CPU,
        or with `as_uint8` (B, sH, sW, 3) uint8 quantised as `images.output_array` does.
        `finish`: for a tiled image, what each band of its rows becomes as its
        tiles finish (`tiled`'s), in place of the float canvas or `as_uint8`.
        On out-of-memory the batch is split in halves, and single images are tiled
        with halving tiles; the smaller batch or tile is kept for later images.
        Safe to call from several threads."""
        lr = torch.stack(rgbs)
        with self._device_lock:  # text encoding included: it runs on the device too
            return self._retrying(lr, self.conditions(captions), as_uint8, finish)

    def _retrying(self, lr: torch.Tensor, cond, as_uint8: bool, finish=None) -> torch.Tensor:
        while True:
            try:
                return self._forward(lr, cond, as_uint8, finish)
            except (RuntimeError, torch.OutOfMemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                release_cached_memory(self.device)
                if len(lr) > 1:  # fewer images at a time before smaller tiles
                    half = len(lr) // 2
                    self.batch_cap = min(self.batch_cap, half)  # and for the batches to come
                    self.warn(f"out of memory: retrying {half} image(s) at a time")
                    parts = split_conditions(cond)
                    return torch.cat([self._retrying(lr[:half], cat_conditions(parts[:half]), as_uint8, finish),
                                      self._retrying(lr[half:], cat_conditions(parts[half:]), as_uint8, finish)])
                current = self.tile or max(lr.shape[-2:])
                if current <= 16:
                    raise RuntimeError(f"out of memory even with {current}px tiles") from None
                self.tile = current // 2
                self.warn(f"out of memory: retrying with --tile {self.tile}")

    def upscale(self, rgb: torch.Tensor, caption: str, image: Path) -> torch.Tensor:
        self.check_caption(caption, image)
        return self.upscale_batch([rgb], [caption])[0]


def quantise(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounded half to even as
    `images.output_array` rounds (the same bytes from the same floats)."""
    return rgb.float().mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def split_conditions(cond) -> list:
    """Per-caption conditions (batch of one each) from a batched one."""
    fields = [f.name for f in dataclasses.fields(cond)]
    n = getattr(cond, fields[0]).shape[0]
    return [type(cond)(**{f: getattr(cond, f)[i : i + 1] for f in fields}) for i in range(n)]


def cat_conditions(conds: list):
    """One batched text condition from per-caption ones (any dataclass of tensors)."""
    if len(conds) == 1:
        return conds[0]
    fields = {f.name: torch.cat([getattr(c, f.name) for c in conds]) for f in dataclasses.fields(conds[0])}
    return type(conds[0])(**fields)
