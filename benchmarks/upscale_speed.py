"""End-to-end `upscale` throughput against the forward pass alone and against
PIL bicubic, per preset and scale, each configuration in its own process
(peak RSS is its own); and peak memory of a 1024x1024 input at x8, tiled.

End-to-end = clipsr_cli.pipeline.upscale.run on a folder of PNGs: planning, decoding
(in the main thread on the CPU, in worker threads on an accelerator), one
caption encoded once, forward passes in lanes, PNG encoding, atomic writes.
Forward only = the same generator on the same decoded tensors, two ways: one
batch at a time on all threads (what a loop over the model does), and in the
same lanes as upscale (no decoding or writing).  PIL bicubic = decode,
resize, encode (PNG level 1, as upscale writes), write.
Random weights (timing does not depend on them); the paper preset's CLIP is
randomly initialised offline.  Each figure is the best of --repeats rounds,
a round running each kind once; the ratios are also given as the median of
each round's own (its runs side by side).  The host share is the part of the
end-to-end run's CPU time spent outside the network: with every core busy,
end to end can reach at most (1 - host share) of the forward in lanes.  On a
GPU (`--device cuda`) the forward passes include the copies to and from the
device and the quantising there, as upscale's do.

    python3 benchmarks/upscale_speed.py [--repeats 5]
    python3 benchmarks/upscale_speed.py --device cuda --images 2048 --batch 16 --lanes 2 4 8
    python3 benchmarks/upscale_speed.py --host-ceiling   # upscale.run with a network that costs nothing
    python3 benchmarks/upscale_speed.py --ablate tiny 8  # what writing, quantising, decoding cost end to end
    python3 benchmarks/upscale_speed.py --folders tiny 8 /tmp /dev/shm  # the file system's part
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

# tiny: 192 images (about 1.5 s a run here), long enough that per-run noise is not the figure;
# small: the bundled default models' preset, what `clipsr upscale` runs with no --weights
CONFIGS = [("tiny", 4, 192, 8), ("tiny", 8, 192, 8), ("small", 4, 96, 8), ("small", 8, 96, 8),
           ("paper", 4, 32, 8), ("paper", 8, 32, 8)]
LR_SIDE = {4: 64, 8: 32}  # training-size LR: 256 px outputs


def make_folder(folder: Path, n: int, side: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (side // 4, side // 4, 3), dtype=np.uint8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(small).resize((side, side), Image.BICUBIC).save(path)
        paths.append(path)
    return paths


def build(preset: str, scale: int):
    from clipsr_cli.model.clip import build_clip
    from clipsr_cli.model.config import load_preset
    from clipsr_cli.model.generator import Generator

    cfg = load_preset(preset)
    return Generator(cfg, build_clip(cfg), scale)  # random CLIP: no weights file needed


def one(preset: str, scale: int, n: int, batch: int, tile_test: int | None, repeats: int = 4,
        device: str = "cpu", precision: str | None = None, n_lanes: int | None = None,
        work_dir: str | None = None, cuda_graphs: bool = True, decoders: int | None = None,
        keep_files: bool = False, io: str = "auto") -> dict:
    """io: where decoding and writing run: "auto" (as `upscale` chooses),
    "threads", or "processes" (`HostWorkers`, started inside the timed run)."""
    import torch

    from clipsr_cli.io.captions import Captions
    from clipsr_cli.io.images import load_image
    from clipsr_cli.pipeline.devices import pick_device, pick_precision
    from clipsr_cli.pipeline.host_workers import HostWorkers, worker_counts
    from clipsr_cli.pipeline.lanes import Lanes, default_lanes
    from clipsr_cli.pipeline.memory import keep_freed_memory
    from clipsr_cli.pipeline.upscale import run
    from clipsr_cli.pipeline.upscaler import Upscaler

    keep_freed_memory()  # as the CLI does
    gen = build(preset, scale)
    dev = pick_device(device)
    dtype = pick_precision(precision, dev)
    caption = "a small bird with a red head on a branch"
    result = {"preset": preset, "scale": scale, "images": n, "batch": batch, "device": str(dev),
              "dtype": str(dtype).removeprefix("torch.") + ("" if cuda_graphs or dev.type != "cuda" else ", eager")}
    threads = torch.get_num_threads()
    lane_spec = default_lanes(dev) if n_lanes is None else \
        (n_lanes, max(1, threads // n_lanes) if dev.type == "cpu" else None)
    result["lanes"] = lane_spec[0] if decoders is None else f"{lane_spec[0]}, {decoders} decoders"

    def host_workers():
        if io == "auto":
            return HostWorkers.for_run(dev, n)
        return HostWorkers(*worker_counts()) if io == "processes" else None

    probe = host_workers()
    result["lanes"] = f"{result['lanes']}, {probe.describe() if probe else 'I/O in threads'}"
    if probe is not None:
        probe.close()

    def device_peak() -> dict:
        if dev.type != "cuda":
            return {}
        return {"peak_device_gib": torch.cuda.max_memory_allocated(dev) / 2**30}

    with scratch_folder(work_dir, keep_files) as tmp:
        if tile_test is not None:
            lr = tmp / "lr"
            lr.mkdir()
            make_folder(lr, 1, 1024)
            upscaler = Upscaler(gen, dev, dtype=dtype, tile=tile_test or None, cuda_graphs=cuda_graphs)  # 0: auto
            start = time.perf_counter()
            report = run(upscaler, lr, sorted(lr.glob("*.png")), tmp / "sr", Captions(lr, text=caption))
            assert len(report.done) == 1, report.failed
            return result | {"tile": upscaler.tile, "seconds": time.perf_counter() - start,
                             "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                             **device_peak()}
        lr = tmp / "lr"
        lr.mkdir()
        paths = make_folder(lr, n, LR_SIDE[scale])
        upscaler = Upscaler(gen, dev, dtype=dtype, tile=0, cuda_graphs=cuda_graphs)
        rgbs = [load_image(p).rgb for p in paths]
        as_uint8 = not upscaler.forward_in_lanes  # as upscale does on an accelerator: quantised there
        chunks = [(rgbs[i : i + batch], [caption] * len(rgbs[i : i + batch]), as_uint8) for i in range(0, n, batch)]
        for _ in range(3 if dev.type == "cuda" else 1):  # warm-up: caption cached, CUDA graph captured
            upscaler.upscale_batch(*chunks[0])

        forward, lanes_forward, end_to_end, host_share = [], [], [], []
        for attempt in range(repeats):  # alternated, best of each: this machine is noisy
            start = time.perf_counter()
            for chunk in chunks:
                upscaler.upscale_batch(*chunk)
            forward.append(n / (time.perf_counter() - start))
            if upscaler.forward_in_lanes:  # on an accelerator upscale's forward runs as above
                start = time.perf_counter()
                run_forward_in_lanes(upscaler, chunks, lane_spec)
                lanes_forward.append(n / (time.perf_counter() - start))
            with cpu_split(upscaler) as split:
                start = time.perf_counter()
                host = host_workers()
                try:
                    report = run(upscaler, lr, paths, tmp / f"sr{attempt}", Captions(lr, text=caption),
                                 batch_size=batch, lanes=Lanes(*lane_spec), decoders=decoders, host=host)
                finally:
                    if host is not None:
                        host.close()
                end_to_end.append(n / (time.perf_counter() - start))
            host_share.append(split.host_share())
            assert len(report.done) == n, report.failed
        # the ratio of each round (its runs side by side), median over rounds: the
        # best of each kind can come from different rounds of a noisy machine
        per_round = [e / f for e, f in zip(end_to_end, forward)]
        per_round_lanes = [e / f for e, f in zip(end_to_end, lanes_forward)]
        result |= {"forward_ips": max(forward), "lanes_forward_ips": max(lanes_forward, default=None),
                   "end_to_end_ips": max(end_to_end), "median_ratio": statistics.median(per_round),
                   "median_lanes_ratio": statistics.median(per_round_lanes) if per_round_lanes else None,
                   "ratio_range": [min(per_round), max(per_round)],
                   # forward CPU time is all on the calling thread only with one intra-op thread per lane
                   "host_share": statistics.median(host_share) if lane_spec[1] == 1 else None}
        start = time.perf_counter()
        (tmp / "bic").mkdir()
        for p in paths[:256]:  # single-threaded: a sample is enough
            with Image.open(p) as im:
                im.resize((im.width * scale, im.height * scale), Image.BICUBIC).save(tmp / "bic" / p.name,
                                                                                  compress_level=1)
        result["bicubic_ips"] = len(paths[:256]) / (time.perf_counter() - start)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result | device_peak()


@contextmanager
def scratch_folder(parent: str | None, keep: bool):
    """A new folder under `parent`, removed on leaving unless `keep`: a whole
    benchmark's files are removed at its end, not between configurations,
    whose file creates would be slowed by the removals (see create_cost)."""
    path = Path(tempfile.mkdtemp(prefix="clipsr-bench-", dir=parent))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def run_forward_in_lanes(upscaler, chunks: list[tuple], lane_spec: tuple[int, int | None]) -> None:
    """The forward passes alone (upscale_batch's arguments, a chunk a batch) in
    lanes as upscale runs them on the CPU: no decoding, no writing."""
    from clipsr_cli.pipeline.lanes import Lanes

    lanes = Lanes(*lane_spec)
    for chunk in chunks:
        lanes.submit(partial(upscaler.upscale_batch, *chunk), lambda result, error: None)
    lanes.close()


class CpuSplit:
    """CPU time (all threads) of a run, and the part spent in forward passes."""

    def __init__(self):
        self.forward = self.total = 0.0
        self._lock = threading.Lock()

    def add_forward(self, seconds: float) -> None:
        with self._lock:  # from every lane
            self.forward += seconds

    def host_share(self) -> float:
        """Share of the run's CPU time spent outside the network: decoding,
        quantising, encoding, writing, bookkeeping.  On a machine whose cores
        are all busy, end to end reaches at most 1 - this of the forward in lanes."""
        return 1 - self.forward / self.total if self.total else 0.0


@contextmanager
def cpu_split(upscaler):
    """Time the upscaler's forward passes on the threads that run them (on the
    CPU the whole pass runs in that thread, one intra-op thread per lane)."""
    split, forward = CpuSplit(), upscaler.upscale_batch

    def timed(*args, **kwargs):
        start = time.thread_time()
        try:
            return forward(*args, **kwargs)
        finally:
            split.add_forward(time.thread_time() - start)

    start = process_cpu()
    upscaler.upscale_batch = timed
    try:
        yield split
    finally:
        del upscaler.upscale_batch  # the method again
        split.total = process_cpu() - start


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def host_ceiling(n: int, batch: int, lanes: int, caller_driven: bool, repeats: int, processes: bool = False) -> float:
    """img/s of upscale.run when the network costs nothing (nearest-neighbour x4
    in its place): the most the host's decoding, quantising, encoding, writing
    and bookkeeping allow.  caller_driven: as on an accelerator (forward in the
    main thread, lanes only write); else as on the CPU (forward in the lanes).
    processes: decoding and writing in worker processes (`HostWorkers`, as
    many as `upscale` starts on this machine's cores; their start is timed too)."""
    import torch
    import torch.nn.functional as F

    from clipsr_cli.io.captions import Captions
    from clipsr_cli.pipeline.host_workers import HostWorkers, worker_counts
    from clipsr_cli.pipeline.lanes import Lanes
    from clipsr_cli.pipeline.memory import keep_freed_memory
    from clipsr_cli.pipeline.upscale import run
    from clipsr_cli.pipeline.upscaler import Upscaler, quantise

    keep_freed_memory()
    upscaler = Upscaler(build("tiny", 4), torch.device("cpu"), tile=0)
    upscaler.forward_in_lanes = not caller_driven

    def free_network(rgbs, captions, as_uint8=False):
        out = F.interpolate(torch.stack(rgbs), scale_factor=4, mode="nearest")
        return quantise(out) if as_uint8 else out

    upscaler.upscale_batch = free_network
    best = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        lr = Path(tmp) / "lr"
        lr.mkdir()
        paths = make_folder(lr, n, LR_SIDE[4])
        for attempt in range(repeats):
            start = time.perf_counter()
            host = HostWorkers(*worker_counts()) if processes else None
            try:
                report = run(upscaler, lr, paths, Path(tmp) / f"sr{attempt}", Captions(lr, text="a bird"),
                             batch_size=batch, lanes=Lanes(lanes, 1 if not caller_driven else None), host=host)
            finally:
                if host is not None:
                    host.close()
            best = max(best, n / (time.perf_counter() - start))
            assert len(report.done) == n, report.failed
    return best


def timed_run(upscaler, lr: Path, paths: list[Path], out: Path, captions, batch: int) -> float:
    """img/s of upscale.run over `paths` into `out`, in the CLI's lanes for the CPU."""
    import torch

    from clipsr_cli.pipeline import upscale
    from clipsr_cli.pipeline.lanes import Lanes, default_lanes

    start = time.perf_counter()
    report = upscale.run(upscaler, lr, paths, out, captions, batch_size=batch,
                         lanes=Lanes(*default_lanes(torch.device("cpu"))))
    assert len(report.done) == len(paths), report.failed
    return len(paths) / (time.perf_counter() - start)


def create_cost(folder: Path, n: int = 200) -> float:
    """Median CPU seconds to create (and close) an empty file in `folder`.  The
    files are left in place: removing them is what makes the next creates slow
    on a file system that skips recently freed inodes (ext4 without a journal)."""
    folder.mkdir(parents=True)
    costs = []
    for i in range(n):
        start = time.thread_time()
        os.close(os.open(folder / f".{i:04d}.{os.urandom(8).hex()}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        costs.append(time.thread_time() - start)
    return statistics.median(costs)


def compare_folders(preset: str, scale: int, n: int, batch: int, repeats: int, folders: list[str]) -> dict:
    """upscale.run writing into each of `folders` in turn, against the forward
    in lanes, alternated in one process (median of each round's ratio), and the
    CPU cost of creating a file in each: how much of the end-to-end figure is
    the file system's.  The inputs are decoded from the first folder."""
    import torch

    from clipsr_cli.io.captions import Captions
    from clipsr_cli.pipeline import upscale
    from clipsr_cli.pipeline.lanes import default_lanes
    from clipsr_cli.pipeline.memory import keep_freed_memory

    keep_freed_memory()
    dev = torch.device("cpu")
    upscaler = upscale.Upscaler(build(preset, scale), dev, tile=0)
    scratch = [Path(tempfile.mkdtemp(prefix="clipsr-bench-", dir=f)) for f in folders]
    try:
        lr = scratch[0] / "lr"
        lr.mkdir()
        paths = make_folder(lr, n, LR_SIDE[scale])
        caption = "a small bird with a red head on a branch"
        captions = Captions(lr, text=caption)
        rgbs = [upscale.load_image(p).rgb for p in paths]
        chunks = [(rgbs[i : i + batch], [caption] * len(rgbs[i : i + batch])) for i in range(0, n, batch)]
        timed_run(upscaler, lr, paths, scratch[0] / "warm-up", captions, batch)
        result = {f: {"create_us": 1e6 * create_cost(s / "create"), "ratios": []} for f, s in zip(folders, scratch)}
        for attempt in range(repeats):
            start = time.perf_counter()
            run_forward_in_lanes(upscaler, chunks, default_lanes(dev))
            forward = n / (time.perf_counter() - start)
            for f, s in zip(folders, scratch):
                result[f]["ratios"].append(timed_run(upscaler, lr, paths, s / f"sr{attempt}", captions, batch) / forward)
    finally:  # only now: every file removed during the runs would have slowed the creates after it
        for s in scratch:
            shutil.rmtree(s, ignore_errors=True)
    return result


ABLATIONS = {  # what each run of `ablate` leaves out of upscale.run, by the names it calls
    "nothing": (),
    "writing": ("write_image",),
    "quantising and writing": ("write_image", "output_array"),
    "all host work": ("write_image", "output_array", "load_image"),
}


def ablate(preset: str, scale: int, n: int, batch: int, repeats: int) -> dict:
    """upscale.run on the CPU with parts of the host work left out (each replaced
    by a no-op; decoding by a lookup of images decoded beforehand), against the
    forward in lanes, alternated in one process: each round's ratio, median over
    rounds.  What a part costs end to end, contention included: its CPU time
    alone understates it, as the lanes' forward passes wait for the cores (and
    the GIL) that it takes."""
    from unittest import mock

    import torch

    from clipsr_cli.io.captions import Captions
    from clipsr_cli.pipeline import upscale
    from clipsr_cli.pipeline.lanes import default_lanes
    from clipsr_cli.pipeline.memory import keep_freed_memory

    keep_freed_memory()
    dev = torch.device("cpu")
    upscaler = upscale.Upscaler(build(preset, scale), dev, tile=0)
    ratios: dict[str, list[float]] = {name: [] for name in ABLATIONS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lr = tmp / "lr"
        lr.mkdir()
        paths = make_folder(lr, n, LR_SIDE[scale])
        decoded = {p: upscale.load_image(p) for p in paths}
        stand_ins = {"write_image": lambda path, arr: None, "output_array": lambda *args: None,
                     "load_image": decoded.__getitem__}
        caption = "a small bird with a red head on a branch"
        captions = Captions(lr, text=caption)
        chunks = [([decoded[p].rgb for p in paths[i : i + batch]], [caption] * len(paths[i : i + batch]))
                  for i in range(0, n, batch)]

        def upscale_run(out: Path) -> float:
            return timed_run(upscaler, lr, paths, out, captions, batch)

        upscale_run(tmp / "warm-up")
        for attempt in range(repeats):
            start = time.perf_counter()
            run_forward_in_lanes(upscaler, chunks, default_lanes(dev))
            forward = n / (time.perf_counter() - start)
            for name, left_out in ABLATIONS.items():
                with contextlib.ExitStack() as patches:
                    for fn in left_out:
                        patches.enter_context(mock.patch.object(upscale, fn, stand_ins[fn]))
                    ratios[name].append(upscale_run(tmp / f"{attempt}-{len(left_out)}") / forward)
    return {name: statistics.median(r) for name, r in ratios.items()}


def pieces(n: int = 96) -> dict:
    """CPU time (user + system, all threads) per image of the non-network work, tiny x4 outputs."""
    import torch

    from clipsr_cli.io.images import load_image, output_array, write_image

    gen = build("tiny", 4).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_folder(tmp, n, LR_SIDE[4])
        with torch.inference_mode():
            cond = gen.encode_text(["a bird"] * 8)
            srs = torch.cat([gen(torch.stack([load_image(p).rgb for p in paths[i : i + 8]]), cond)
                             for i in range(0, n, 8)]).clamp_(0, 1)
        t0 = process_cpu()
        for p in paths:
            load_image(p)
        t1 = process_cpu()
        arrays = [output_array(tmp / "x.png", sr) for sr in srs]
        t2 = process_cpu()
        for i, arr in enumerate(arrays):
            write_image(tmp / f"out{i}.png", arr)
        t3 = process_cpu()
    return {"decode": t1 - t0, "quantise": t2 - t1, "encode+write": t3 - t2, "n": n}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--one", nargs=4, metavar=("PRESET", "SCALE", "N", "BATCH"))
    p.add_argument("--tile-test", type=int, metavar="TILE", help="1024x1024 at x8 with this tile (0: automatic)")
    p.add_argument("--pieces", action="store_true", help="core-ms per image of decoding, quantising, writing")
    p.add_argument("--ablate", nargs=2, metavar=("PRESET", "SCALE"),
                   help="CPU: end to end with writing, quantising, decoding left out, against the forward in lanes")
    p.add_argument("--host-ceiling", action="store_true",
                   help="upscale.run's img/s with a network that costs nothing, by lanes")
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds, each running every kind once; the best of each kind is kept")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] | mps | auto")
    p.add_argument("--precision", default=None, help="fp32 | bf16 | fp16 (default: the CLI's for the device)")
    p.add_argument("--lanes", type=int, nargs="+", help="lane counts to compare (default: the CLI's)")
    p.add_argument("--images", type=int, help="images per configuration (default: tiny 192, small 96, paper 32)")
    p.add_argument("--batch", type=int, help="batch size (default: 8)")
    p.add_argument("--presets", nargs="*", default=["tiny", "small", "paper"], help="none: only the tile test")
    p.add_argument("--scales", type=int, nargs="+", default=[4, 8])
    p.add_argument("--work-dir", help="where the input and output folders go (default: the system's temporary)")
    p.add_argument("--keep-files", action="store_true", help=argparse.SUPPRESS)  # the parent removes them
    p.add_argument("--folders", nargs="+", metavar="PRESET SCALE DIR",
                   help="CPU: end to end writing into each folder DIR in turn, against the forward in lanes, "
                        "and the cost of creating a file in each")
    p.add_argument("--no-tile-test", action="store_true", help="skip the 1024x1024 x8 runs")
    p.add_argument("--eager", action="store_true", help="CUDA: no graphs, every kernel launched from Python")
    p.add_argument("--decoders", type=int, help="decoding threads, 0: in the main thread (default: upscale's)")
    p.add_argument("--io", choices=("auto", "threads", "processes"), default="auto",
                   help="decoding and writing in threads or worker processes (auto: as upscale chooses)")
    args = p.parse_args()
    if args.folders:
        if len(args.folders) < 3:
            p.error("--folders takes a preset, a scale and at least one folder")
        preset, scale, *folders = args.folders
        r = compare_folders(preset, int(scale), args.images or 192, args.batch or 8, args.repeats, folders)
        print(f"| {preset} x{scale}: outputs in | creating a file (CPU us, median) | end to end / forward in lanes: "
              f"median round (range) |\n|---|---|---|")
        for folder, v in r.items():
            print(f"| {folder} | {v['create_us']:.0f} | {statistics.median(v['ratios']):.1%} "
                  f"({min(v['ratios']):.0%}–{max(v['ratios']):.0%}) |")
        return
    if args.host_ceiling:
        print("| lanes | forward driven from | decoding and writing in | host ceiling, tiny x4 outputs (img/s) |\n"
              "|---|---|---|---|")
        for lanes in args.lanes or [1, 2, 4]:
            for caller, processes in ((False, False), (True, False), (True, True)):
                ips = host_ceiling(args.images or 512, args.batch or 16, lanes, caller, args.repeats, processes)
                where = "processes" if processes else "threads" if caller else "lanes / main thread"
                print(f"| {lanes} | {'main thread' if caller else 'lanes'} | {where} | {ips:.0f} |", flush=True)
        return
    if args.ablate:
        preset, scale = args.ablate
        r = ablate(preset, int(scale), args.images or 192, args.batch or 8, args.repeats)
        print(f"| {preset} x{scale}: end to end, leaving out | of the forward in lanes (median round) |\n|---|---|")
        for name, ratio in r.items():
            print(f"| {name} | {ratio:.1%} |")
        return
    if args.pieces:
        r = pieces()
        print(", ".join(f"{k} {1000 * v / r['n']:.2f}" for k, v in r.items() if k != "n") + " core-ms per image")
        return
    if args.one:
        preset, scale, n, batch = args.one
        print(json.dumps(one(preset, int(scale), int(n), int(batch), args.tile_test, args.repeats, args.device,
                             args.precision, args.lanes[0] if args.lanes else None, args.work_dir,
                             cuda_graphs=not args.eager, decoders=args.decoders, keep_files=args.keep_files, io=args.io)))
        return

    run_dir = Path(tempfile.mkdtemp(prefix="clipsr-bench-", dir=args.work_dir))  # removed at the end
    try:
        run_all(args, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_all(args, run_dir: Path) -> None:
    """Each configuration and the tile test in its own process, their files kept in run_dir."""
    device_args = ["--device", args.device] + (["--precision", args.precision] if args.precision else []) + \
        ["--work-dir", str(run_dir), "--keep-files"] + (["--eager"] if args.eager else []) + \
        (["--decoders", str(args.decoders)] if args.decoders is not None else []) + ["--io", args.io]

    def child(*extra) -> dict:
        done = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def device_memory(r: dict) -> str:
        return f" / {r['peak_device_gib']:.2f} GiB" if "peak_device_gib" in r else ""

    configs = [c for c in CONFIGS if c[0] in args.presets and c[1] in args.scales]
    if configs:
        print("| preset | scale | LR -> SR | device, precision | batch | lanes | forward only, one batch at a time "
              "(img/s) | forward only, in lanes | end-to-end (img/s) | end-to-end / forward: best / median round "
              "(range) | end-to-end / forward in lanes: best / median round | host share of CPU time "
              "| PIL bicubic (img/s) | peak RSS (/ device) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for preset, scale, n, batch in configs:
        n, batch = args.images or n, args.batch or batch
        for lanes in args.lanes or [None]:
            r = child("--one", preset, str(scale), str(n), str(batch), "--repeats", str(args.repeats), *device_args,
                      *(["--lanes", str(lanes)] if lanes else []))
            side = LR_SIDE[scale]
            in_lanes = r["lanes_forward_ips"]
            lanes_fwd, lanes_ratio = (f"{in_lanes:.2f}", f"{r['end_to_end_ips'] / in_lanes:.0%} / "
                                      f"{r['median_lanes_ratio']:.0%}") if in_lanes else ("—", "—")
            low, high = r["ratio_range"]
            host = "—" if r["host_share"] is None else f"{r['host_share']:.1%}"
            print(f"| {preset} | x{scale} | {side} -> {side * scale} | {r['device']}, {r['dtype']} | {batch} | "
                  f"{r['lanes']} | {r['forward_ips']:.2f} | {lanes_fwd} | {r['end_to_end_ips']:.2f} | "
                  f"{r['end_to_end_ips'] / r['forward_ips']:.0%} / {r['median_ratio']:.0%} ({low:.0%}–{high:.0%}) | "
                  f"{lanes_ratio} | {host} | {r['bicubic_ips']:.1f} | {r['peak_rss_gib']:.2f} GiB{device_memory(r)} |",
                  flush=True)
    if args.no_tile_test:
        return
    print("\n| 1024x1024 LR -> 8192x8192, tiny x8 | tile (LR px) | seconds | peak RSS (/ device) |\n|---|---|---|---|")
    for tile in (0, 256, 128):  # the paper preset needs ~19 TFLOP for this image: minutes on this CPU
        r = child("--one", "tiny", "8", "1", "1", "--tile-test", str(tile), *device_args)
        print(f"| {'automatic' if tile == 0 else '--tile'} | {r['tile']} | {r['seconds']:.1f} | "
              f"{r['peak_rss_gib']:.2f} GiB{device_memory(r)} |", flush=True)

if __name__ == "__main__":
    main()
