"""The batch upscaling pipeline: inputs -> captions -> generator -> outputs.

One bad file never stops a run: it is reported and the run goes on.  Outputs
are written atomically, so `--skip-existing` resumes an interrupted run.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from clipsr_cli.io.captions import CaptionError, Captions
from clipsr_cli.io.files import remove_stale_temporaries
from clipsr_cli.io.images import ImageError, holds_alpha, is_plain_8bit, load_image, output_array, write_image
from clipsr_cli.pipeline.host_workers import HostWorkers, as_tensors
from clipsr_cli.pipeline.lanes import Lanes, default_lanes
from clipsr_cli.pipeline.plan import OutputClaims, earlier_outputs, output_name, output_refusal
from clipsr_cli.pipeline.prefetch import in_order, outcome, prefetch
from clipsr_cli.pipeline.upscaler import Upscaler


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
        lanes: Lanes | None = None, decoders: int | None = None, report: Report | None = None,
        host: HostWorkers | None = None) -> Report:
    """Upscale every image (one output per caption).  Consecutive outputs of the
    same LR size go through the network together, up to `batch_size` (None:
    `Upscaler.auto_batch`); batches are carried from forward pass to written
    files by `lanes` (default: `default_lanes` for the upscaler's device), which
    run closes when done.  Images decode in `decoders` threads (default: none,
    in this thread, where the CPU's cores compute; one per two lanes on an
    accelerator), or in `host`'s worker processes, which then also encode and
    write the outputs (the caller closes them).  `report`: filled as the run
    goes (what was done so far, should it be interrupted), and returned."""
    batch_run = BatchRun(upscaler, root, out_dir, captions, suffix, ext, skip_existing, progress, batch_size,
                         lanes or Lanes(*default_lanes(upscaler.device)), report or Report(), host)
    batch_run.plan(images)
    return batch_run.execute(decoders)


class BatchRun:
    """One `run`: the planned jobs, the outputs each still owes, the batch being
    gathered, and the report.  Batches go to the lanes; their results come back
    through `done`, in this thread."""

    def __init__(self, upscaler: Upscaler, root: Path, out_dir: Path, captions: Captions, suffix: str,
                 ext: str | None, skip_existing: bool, progress: Callable[[], None], batch_size: int | None,
                 lanes: Lanes, report: Report, host: HostWorkers | None = None):
        self.upscaler, self.root, self.out_dir, self.captions = upscaler, root, out_dir, captions
        self.host = host
        self.suffix, self.ext, self.skip_existing = suffix, ext, skip_existing
        self.progress, self.batch_size, self.lanes, self.report = progress, batch_size, lanes, report
        self.jobs: list[_Job] = []
        self.remaining: dict[int, int] = {}  # outputs still to write, per job
        self.failed: set[int] = set()
        self.pending: list[_Item] = []
        self.claims: OutputClaims | None = None
        self.flattened_said = False  # the transparency warning is given once per run
        self.decoding = None  # the decoding generator, closed on a stop
        self.stopping = False  # after a full disk or Ctrl-C: running batches are counted, nothing raised
        self.limit = 1  # the batch size for the current LR size (the decoder reads ahead twice that)

    def plan(self, images: list[Path]) -> None:
        earlier = earlier_outputs(images, self.root, self.out_dir, self.suffix)
        self.claims = OutputClaims([image for image in images if image not in earlier], self.ext, self.out_dir)
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
                if isinstance(e, OSError) and e.errno in STOPPING_ERRNOS and not self.stopping:
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
            lanes.run_alone(partial(_upscale_and_write, upscaler, batch, self.host), on_done)
        elif upscaler.forward_in_lanes:
            lanes.submit(partial(_upscale_and_write, upscaler, batch, self.host), on_done)
        else:
            # an accelerator is driven from this thread alone (a new thread's first
            # launches set up its own library handles: the forward in 2-8 lanes ran
            # 1.7-4.3x slower on an H100, BENCHMARKS.md); the lanes quantise, encode, write
            srs = outcome(_upscale, upscaler, batch, _plain(batch))
            lanes.submit(partial(_write_outputs, batch, srs, self.host), on_done)

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
        if decoded.frames > 1:
            upscaler.warn(f"{job.image} holds {decoded.frames} frames: only the first is upscaled")
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
            alpha_up = upscaler.upscale_alpha(decoded.alpha)
        for caption, target in zip(job.captions, targets):
            upscaler.check_caption(caption, job.image)
            self.limit = upscaler.batch_limit(decoded.rgb, self.batch_size)
            pending = self.pending
            if pending and (len(pending) >= self.limit or pending[0].rgb.shape != decoded.rgb.shape):
                self.flush()
            self.pending.append(_Item(job, decoded.rgb, caption, target, alpha_up, decoded.gray, decoded.bits))

    def finish_running(self) -> None:
        """Queued batches dropped; running ones finish (their writes are atomic) and
        are counted, so the report says exactly what is on disk."""
        if self.stopping:
            return
        self.stopping = True
        if self.decoding is not None:
            self.decoding.close()  # its threads (on an accelerator) finish the image they decode
        self.lanes.stop()

    def execute(self, decoders: int | None) -> Report:
        try:
            if decoders is None:
                # CPU: this thread decodes the next batch while the lanes run the queued ones
                # (a decoding thread measured 1.5-4% slower end to end on 2 cores: one more
                # thread to switch to).  Accelerator: this thread launches the forward passes,
                # so images decode in threads, up to two batches ahead (on an H100, 2 decoders
                # for 4 lanes ended 1.2x faster than 4: they share the GIL)
                decoders = 0 if self.upscaler.forward_in_lanes else max(1, self.lanes.n // 2)
            def depth() -> int:
                return max(4, 2 * self.limit)

            if self.host is not None:
                self.decoding = in_order(lambda j: self.host.decode(j.image), self.jobs, depth,
                                         2 * self.host.decoders)
            else:
                self.decoding = prefetch(lambda j: load_image(j.image), self.jobs, depth, decoders)
            with deferred_interrupts() as interrupted:
                for job, decoded in self.decoding:
                    self.queue(job, as_tensors(decoded) if self.host is not None else decoded)
                    if interrupted.is_set():
                        break
                else:
                    self.flush()
                    self.lanes.close()
                if interrupted.is_set():
                    # however many came: the running batches finish and are counted, queued ones dropped
                    self.finish_running()
                    raise KeyboardInterrupt
        except _Stop:  # a full disk: every later output would fail the same way
            self.finish_running()
            return self.report
        except KeyboardInterrupt:  # from a thread whose SIGINT is not deferred
            self.finish_running()
            raise
        except BaseException:
            self.lanes.cancel()
            raise
        remove_stale_temporaries(self.claims.paths())  # what a killed run left beside these outputs
        return self.report


@contextlib.contextmanager
def deferred_interrupts():
    """Ctrl-C inside only sets the yielded event, which the run checks between
    inputs: no KeyboardInterrupt lands between a file written and its report,
    and more Ctrl-Cs change nothing.  (Only the main thread gets signals; run
    elsewhere, the event is never set.)  After an interrupt, SIGINT stays
    ignored: the process is on its way out, with one message."""
    event = threading.Event()
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: event.set())
    except ValueError:  # not the main thread
        yield event
        return
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if event.is_set() else previous)


def _upscale_and_write(upscaler: Upscaler, batch: list[_Item], host: HostWorkers | None = None
                       ) -> list[Exception | None]:
    """One batch through the network, its outputs quantised and written (in a
    lane): the error of each output, or None.  A failed forward pass raises.
    A tiled image becomes its file's integer image band by band as its tiles
    finish: it is never whole in float."""
    if upscaler.is_tiled(batch[0].rgb):  # alone in its batch, unless the tile shrank since it was queued
        return _write_outputs(batch, [upscaler.upscale_batch([it.rgb], [it.caption], finish=partial(_output_rows, it))[0]
                                      for it in batch], host)
    return _write_outputs(batch, _upscale(upscaler, batch), host)


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



def _write_outputs(batch: list[_Item], srs: torch.Tensor | list[torch.Tensor] | Exception,
                   host: HostWorkers | None = None) -> list[Exception | None]:
    """The batch's outputs quantised and written (encoded and written in `host`'s
    worker processes, all of the batch at once, where given): the error of
    each, or None.  `srs` is the forward pass's result, or its error (raised here)."""
    if isinstance(srs, Exception):
        raise srs
    outcomes: list = []  # per output: None (written), its error, or a worker's future
    for it, sr in zip(batch, srs):
        try:
            arr = sr.numpy() if sr.dtype in (torch.uint8, torch.uint16) else \
                output_array(it.target, sr, it.alpha, it.gray, it.bits, consume=True)  # this batch's own outputs
            outcomes.append(host.write(it.target, arr) if host is not None else write_image(it.target, arr))
        except (OSError, ImageError) as e:
            outcomes.append(e)
    return [_written(o) for o in outcomes]


def _written(outcome) -> Exception | None:
    """A worker's write waited for: None, or its error."""
    if not isinstance(outcome, Future):
        return outcome
    try:
        outcome.result()
    except (OSError, ImageError) as e:
        return e
    return None
