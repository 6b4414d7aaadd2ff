"""The batch upscaling pipeline: inputs -> captions -> generator -> outputs.

One bad file never stops a run: it is reported and the run goes on.  Outputs
are written atomically, so `--skip-existing` resumes an interrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from clipsr_cli.io.captions import CaptionError, Captions
from clipsr_cli.model.clip import MAX_CAPTION_TOKENS
from clipsr_cli.pipeline.devices import pick_memory_format, release_cached_memory
from clipsr_cli.errors import UsageError
from clipsr_cli.io.files import remove_stale_temporaries
from clipsr_cli.pipeline.graphs import GraphedForward
from clipsr_cli.io.images import ImageError, holds_alpha, is_plain_8bit, load_image, output_array, write_image
from clipsr_cli.pipeline.lanes import Lanes, default_lanes
from clipsr_cli.pipeline.plan import OutputClaims, earlier_outputs, output_name, output_refusal
from clipsr_cli.pipeline.prefetch import prefetch
from clipsr_cli.pipeline.tiling import (auto_batch, auto_tile, host_memory_shortfall, is_out_of_memory, output_host_bytes,
                               tiled)



DEFAULT_MODELS = {4: "clipsr-default-x4", 8: "clipsr-default-x8"}  # weights manifest names


def default_model(scale: int, weights_dir=None) -> tuple[Path, str]:
    """The bundled model for `scale` and the one-line note that says it is used."""
    from clipsr_cli.model.weights import get_entry, resolve

    if scale not in DEFAULT_MODELS:
        raise UsageError(f"no bundled model for x{scale} (bundled: "
                         f"{', '.join(f'x{s}' for s in DEFAULT_MODELS)}); pass --weights FILE, "
                         f"--preset NAME to run an untrained preset, or drop --scale and give --outscale "
                         f"{scale}: the x4 model's output resized")
    name = DEFAULT_MODELS[scale]
    path = resolve(name, weights_dir=weights_dir)
    return path, f"no --weights: using the bundled default model {name} ({get_entry(name).description})"


class Written(NamedTuple):
    """An output written: its input, its path and the caption that steered it."""
    image: Path
    output: Path
    caption: str


class Outcome(NamedTuple):
    """An input not upscaled, and why."""
    image: Path
    reason: str  # the whole sentence: its line in the log and in --json
    kind: str  # a short phrase the summary counts by


@dataclass
class Report:
    done: list[Written] = field(default_factory=list)
    skipped: list[Outcome] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)
    missing_captions: int = 0  # inputs with no caption of their own, whatever the policy gave them
    stopped: str = ""  # why the run stopped before its last input (a full disk), else empty

    def skip(self, image: Path, kind: str, reason: str = "") -> None:
        self.skipped.append(Outcome(image, reason or kind, kind))

    def fail(self, image: Path, kind: str, reason: str = "") -> None:
        self.failed.append(Outcome(image, reason or kind, kind))


# write errors that every later output would meet too: the run stops at the first
STOPPING_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class _Stop(Exception):
    pass


def tally(outcomes: list[Outcome]) -> list[tuple[str, int]]:
    """(kind, count), the most frequent first."""
    return Counter(o.kind for o in outcomes).most_common()


def model_file(spec: Path, weights_dir=None) -> Path:
    """--weights: a checkpoint file, or the name of a model in the weights
    manifest (`clipsr-default-x8`), resolved and verified as open_clip's named
    weights are.  Neither: an error that lists the names."""
    from clipsr_cli.model.weights import manifest, resolve

    if spec.exists():
        return spec
    models = sorted(name for name, entry in manifest().items() if entry.filename.startswith("clipsr-"))
    if str(spec) in models:
        return resolve(str(spec), weights_dir=weights_dir)
    raise UsageError(f"--weights {spec}: no such checkpoint file, nor a model name (models: {', '.join(models)})")


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
        self.gen = gen.to(device, memory_format=self.layout).eval()
        self.device = device
        self.dtype = dtype  # computed under autocast; weights and outputs stay fp32
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

    def is_tiled(self, lr: torch.Tensor) -> bool:
        return bool(self.tile) and max(lr.shape[-2:]) > self.tile

    def _eager(self, x: torch.Tensor, cond) -> torch.Tensor:
        # no autocast weight cache: a graph capture must not keep casts made outside it
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32,
                            cache_enabled=False):
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


@dataclass
class _Job:
    image: Path
    captions: list[str]
    outputs: list[Path]  # one per caption, for an image without alpha
    targets: Callable[[bool], list[Path]]  # output paths, given whether the image has alpha


def _plan(image: Path, root: Path, out_dir: Path, captions: Captions, claims: OutputClaims, suffix: str,
          ext: str | None, skip_existing: bool, report: Report) -> _Job | None:
    """The job for one image, or None after recording why it is not done."""
    try:
        caps = captions.own(image)
    except CaptionError as e:
        report.fail(image, "unreadable caption", str(e))
        return None
    if caps is None:
        report.missing_captions += 1
        caps = captions.fallback()
        if caps is None:
            report.fail(image, "no caption", "no caption (give --captions, a .txt sidecar, or --missing-caption)")
            return None
    try:
        rel = image.relative_to(root)
    except ValueError:
        rel = Path(image.name)

    def targets(alpha: bool) -> list[Path]:
        several = len(caps) > 1
        return [out_dir / output_name(rel, suffix, ext, alpha, i if several else None) for i in range(len(caps))]

    planned = targets(False)  # alpha is known only after decoding
    refusal = output_refusal(image, planned, claims, skip_existing)
    if refusal:
        outcome, kind, reason = refusal
        (report.fail if outcome == "failed" else report.skip)(image, kind, reason)
        return None
    return _Job(image, caps, planned, targets)


@dataclass
class _Item:
    job: _Job
    rgb: torch.Tensor
    caption: str
    target: Path
    alpha: torch.Tensor | None
    gray: bool
    bits: int


def run(upscaler: Upscaler, root: Path, images: list[Path], out_dir: Path, captions: Captions,
        suffix: str = "", ext: str | None = None, skip_existing: bool = False,
        progress: Callable[[], None] = lambda: None, batch_size: int | None = 1,
        lanes: Lanes | None = None, decoders: int | None = None, report: Report | None = None) -> Report:
    """Upscale every image (one output per caption).  Consecutive outputs of the
    same LR size go through the network together, up to `batch_size` (None:
    `Upscaler.auto_batch`); batches are carried from forward pass to written
    files by `lanes` (default: `default_lanes` for the upscaler's device), which
    run closes when done.  Images decode in `decoders` threads (default: none,
    in this thread, where the CPU's cores compute; one per two lanes on an
    accelerator).  `report`: filled as the run goes (what was done so far,
    should it be interrupted), and returned."""
    batch_run = BatchRun(upscaler, root, out_dir, captions, suffix, ext, skip_existing, progress, batch_size,
                         lanes or Lanes(*default_lanes(upscaler.device)), report or Report())
    batch_run.plan(images)
    return batch_run.execute(decoders)


class BatchRun:
    """One `run`: the planned jobs, the outputs each still owes, the batch being
    gathered, and the report.  Batches go to the lanes; their results come back
    through `done`, in this thread."""

    def __init__(self, upscaler: Upscaler, root: Path, out_dir: Path, captions: Captions, suffix: str,
                 ext: str | None, skip_existing: bool, progress: Callable[[], None], batch_size: int | None,
                 lanes: Lanes, report: Report):
        self.upscaler, self.root, self.out_dir, self.captions = upscaler, root, out_dir, captions
        self.suffix, self.ext, self.skip_existing = suffix, ext, skip_existing
        self.progress, self.batch_size, self.lanes, self.report = progress, batch_size, lanes, report
        self.jobs: list[_Job] = []
        self.remaining: dict[int, int] = {}  # outputs still to write, per job
        self.failed: set[int] = set()
        self.pending: list[_Item] = []
        self.claims: OutputClaims | None = None
        self.flattened_said = False  # the transparency warning is given once per run
        self.limit = 1  # the batch size for the current LR size (the decoder reads ahead twice that)

    def plan(self, images: list[Path]) -> None:
        earlier = earlier_outputs(images, self.root, self.out_dir, self.suffix)
        self.claims = OutputClaims([image for image in images if image not in earlier], self.ext)
        for image in images:
            if image in earlier:  # the same command run again: it is an output, not an input
                self.report.skip(image, "an earlier output of this command",
                                 f"an earlier output of {earlier[image]}, not upscaled again")
                self.progress()
                continue
            job = _plan(image, self.root, self.out_dir, self.captions, self.claims, self.suffix, self.ext,
                        self.skip_existing, self.report)
            if job is None:
                self.progress()
            else:
                self.jobs.append(job)
        self.remaining = {id(j): len(j.captions) for j in self.jobs}

    # --- bookkeeping ---------------------------------------------------------------
    def finish(self, job: _Job, n: int = 1) -> None:
        self.remaining[id(job)] -= n
        if self.remaining[id(job)] == 0:
            self.progress()

    def fail(self, job: _Job, kind: str, reason: str) -> None:
        if id(job) not in self.failed:
            self.failed.add(id(job))
            self.report.fail(job.image, kind, reason)

    def fail_before_queued(self, job: _Job, kind: str, reason: str) -> None:
        self.fail(job, kind, reason)
        self.finish(job, len(job.captions))

    def take_alpha_outputs(self, job: _Job, targets: list[Path]) -> bool:
        """Whether the job goes on with the outputs its alpha channel gave it
        (checked as planned outputs are), else reported as failed or skipped."""
        refusal = output_refusal(job.image, targets, self.claims, self.skip_existing)
        if refusal is None:
            return True
        outcome, kind, reason = refusal
        if outcome == "failed":
            self.fail(job, kind, reason)
        else:
            self.report.skip(job.image, kind, reason)
        self.finish(job, len(job.captions))
        return False

    def done(self, batch: list[_Item], errors: list[Exception | None] | None, error: Exception | None) -> None:
        if error is not None and not isinstance(error, (OSError, RuntimeError)):
            raise error  # a bug, not a bad input
        for it, e in zip(batch, errors or [error] * len(batch)):
            if e is None:
                self.report.done.append(Written(it.job.image, it.target, it.caption))
            else:
                self.fail(it.job, getattr(e, "kind", None) or f"{type(e).__name__} while upscaling or writing",
                          f"{type(e).__name__}: {e}")
                if isinstance(e, OSError) and e.errno in STOPPING_ERRNOS:
                    self.report.stopped = (f"{e.strerror} writing {it.target}: make room (or fix the folder), "
                                           "then run the same command with --skip-existing to go on")
                    raise _Stop
            self.finish(it.job)

    # --- batches -------------------------------------------------------------------
    def flush(self) -> None:
        batch = [it for it in self.pending if id(it.job) not in self.failed]
        self.pending.clear()
        if not batch:
            return
        upscaler, lanes, on_done = self.upscaler, self.lanes, partial(self.done, batch)
        if upscaler.is_tiled(batch[0].rgb):
            # its tiles are sized for the whole machine's memory
            lanes.run_alone(partial(_upscale_and_write, upscaler, batch), on_done)
        elif upscaler.forward_in_lanes:
            lanes.submit(partial(_upscale_and_write, upscaler, batch), on_done)
        else:
            # an accelerator is driven from this thread alone (a new thread's first
            # launches set up its own library handles: the forward in 2-8 lanes ran
            # 1.7-4.3x slower on an H100, BENCHMARKS.md); the lanes quantise, encode, write
            srs = _outcome(_upscale, upscaler, batch, _plain(batch))
            lanes.submit(partial(_write_outputs, batch, srs), on_done)

    def queue(self, job: _Job, decoded) -> None:
        """A decoded input's outputs into the gathering batch (flushed when full
        or when the LR size changes), or the input reported as failed."""
        upscaler = self.upscaler
        if isinstance(decoded, ImageError):
            return self.fail_before_queued(job, decoded.kind, str(decoded).removeprefix(f"{job.image}: "))
        if isinstance(decoded, Exception):
            return self.fail_before_queued(job, f"{type(decoded).__name__} while decoding",
                                           f"{type(decoded).__name__}: {decoded}")
        refusal = upscaler.memory_refusal(decoded)
        if refusal:
            return self.fail_before_queued(job, "output too large for the free memory", refusal)
        alpha_up, targets = None, job.outputs
        if decoded.alpha is not None:
            targets = job.targets(True)  # PNG where the kept format was chosen without alpha
            if targets != job.outputs and not self.take_alpha_outputs(job, targets):
                return
            if not self.flattened_said and not all(holds_alpha(t) for t in targets):
                self.flattened_said = True
                upscaler.warn(f"{job.image} has transparency, which {targets[0].suffix[1:].upper()} cannot "
                              "hold: composited over white (so is any other such image); --ext png or webp "
                              "keeps it")
            alpha_up = upscaler.resized(F.interpolate(decoded.alpha[None], scale_factor=upscaler.gen.scale,
                                                      mode="bicubic"))[0].clamp(0, 1)
        for caption, target in zip(job.captions, targets):
            upscaler.check_caption(caption, job.image)
            self.limit = upscaler.batch_limit(decoded.rgb, self.batch_size)
            pending = self.pending
            if pending and (len(pending) >= self.limit or pending[0].rgb.shape != decoded.rgb.shape):
                self.flush()
            self.pending.append(_Item(job, decoded.rgb, caption, target, alpha_up, decoded.gray, decoded.bits))

    def execute(self, decoders: int | None) -> Report:
        try:
            if decoders is None:
                # CPU: this thread decodes the next batch while the lanes run the queued ones
                # (a decoding thread measured 1.5-4% slower end to end on 2 cores: one more
                # thread to switch to).  Accelerator: this thread launches the forward passes,
                # so images decode in threads, up to two batches ahead (on an H100, 2 decoders
                # for 4 lanes ended 1.2x faster than 4: they share the GIL)
                decoders = 0 if self.upscaler.forward_in_lanes else max(1, self.lanes.n // 2)
            for job, decoded in prefetch(lambda j: load_image(j.image), self.jobs,
                                         depth=lambda: max(4, 2 * self.limit), workers=decoders):
                self.queue(job, decoded)
            self.flush()
            self.lanes.close()
        except _Stop:  # a full disk: every later output would fail the same way
            self.lanes.cancel()
            return self.report
        except BaseException:
            self.lanes.cancel()
            raise
        remove_stale_temporaries(self.claims.paths())  # what a killed run left beside these outputs
        return self.report


def _upscale_and_write(upscaler: Upscaler, batch: list[_Item]) -> list[Exception | None]:
    """One batch through the network, its outputs quantised and written (in a
    lane): the error of each output, or None.  A failed forward pass raises.
    A tiled image becomes its file's integer image band by band as its tiles
    finish: it is never whole in float."""
    if upscaler.is_tiled(batch[0].rgb):  # alone in its batch, unless the tile shrank since it was queued
        return _write_outputs(batch, [upscaler.upscale_batch([it.rgb], [it.caption], finish=partial(_output_rows, it))[0]
                                      for it in batch])
    return _write_outputs(batch, _upscale(upscaler, batch))


def _output_rows(it: _Item, band: torch.Tensor, top: int) -> torch.Tensor:
    """Rows top.. of an image's output, (1, 3, rows, sW) float, as the rows
    of the integer image `write_image` takes: (1, rows, sW, C), quantised by
    `images.output_array` with the alpha rows joined on."""
    alpha = None if it.alpha is None else it.alpha[:, top : top + band.shape[2]]
    return torch.from_numpy(output_array(it.target, band[0].clamp_(0, 1), alpha, it.gray, it.bits, consume=True))[None]


def _plain(batch: list[_Item]) -> bool:
    """Whether every output of the batch is its network output's 8-bit RGB alone."""
    return all(is_plain_8bit(it.target, it.alpha, it.gray, it.bits) for it in batch)


def _upscale(upscaler: Upscaler, batch: list[_Item], as_uint8: bool = False) -> torch.Tensor:
    return upscaler.upscale_batch([it.rgb for it in batch], [it.caption for it in batch], as_uint8)


def _outcome(fn: Callable, *args):
    """fn(*args), or the exception it raised (raised again where the result is used)."""
    try:
        return fn(*args)
    except Exception as e:
        return e


def _write_outputs(batch: list[_Item], srs: torch.Tensor | list[torch.Tensor] | Exception) -> list[Exception | None]:
    """The batch's outputs quantised and written: the error of each, or None.
    `srs` is the forward pass's result, or its error (raised here)."""
    if isinstance(srs, Exception):
        raise srs
    errors: list[Exception | None] = []
    for it, sr in zip(batch, srs):
        try:
            arr = sr.numpy() if sr.dtype in (torch.uint8, torch.uint16) else \
                output_array(it.target, sr, it.alpha, it.gray, it.bits, consume=True)  # this batch's own outputs
            write_image(it.target, arr)
            errors.append(None)
        except (OSError, ImageError) as e:
            errors.append(e)
    return errors
