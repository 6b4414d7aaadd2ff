"""Lanes: batches in flight on worker threads, results back in order; upscale's outputs do not depend on them."""

import os
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from clipsr_cli.io.captions import Captions
from clipsr_cli.model.generator import Generator
from clipsr_cli.pipeline.lanes import Lanes, default_lanes
from clipsr_cli.pipeline.upscale import run
from clipsr_cli.pipeline.upscaler import Upscaler


def test_results_come_back_in_submission_order_with_errors():
    lanes = Lanes(3)
    seen = []
    for i in range(8):
        def work(i=i):
            time.sleep(0.02 * (8 - i))  # later work finishes first
            if i == 5:
                raise OSError("disk full")
            return i * 10
        lanes.submit(work, lambda result, error, i=i: seen.append((i, result, error)))
    lanes.close()
    assert [i for i, _, _ in seen] == list(range(8))
    assert [r for i, r, _ in seen if i != 5] == [i * 10 for i in range(8) if i != 5]
    assert isinstance(seen[5][2], OSError) and seen[5][1] is None


def test_one_lane_runs_inline_and_run_alone_waits_for_the_others():
    caller = threading.get_ident()
    where = []
    inline = Lanes(1)
    inline.submit(lambda: where.append(threading.get_ident()), lambda r, e: None)
    assert where == [caller]  # done before submit returns
    lanes, order = Lanes(2), []
    lanes.submit(lambda: (time.sleep(0.05), order.append("slow")), lambda r, e: None)
    lanes.run_alone(lambda: order.append(("alone", threading.get_ident())), lambda r, e: None)
    assert order == ["slow", ("alone", caller)]
    lanes.close()


def test_lanes_set_their_own_thread_count_and_give_the_callers_back():
    before = torch.get_num_threads()
    lanes = Lanes(2, torch_threads=1)
    counts = []
    for _ in range(4):
        lanes.submit(torch.get_num_threads, lambda r, e: counts.append(r))
    lanes.close()
    assert counts == [1, 1, 1, 1]
    assert torch.get_num_threads() == before
    seen = []  # a thread started later gets the caller's count, not the lanes'
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [before]


def test_default_lanes_share_the_cpu_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert default_lanes(torch.device("cpu")) == (2, 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert default_lanes(torch.device("cpu")) == (1, 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert default_lanes(torch.device("cuda")) == (4, None)  # writers: the device is driven from one thread
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_lanes(torch.device("cuda")) == (2, None)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_outputs_do_not_depend_on_the_lanes(tiny_cfg, tiny_clip, tmp_path, batch_size):
    folder = tmp_path / "lr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    images = sorted(folder.glob("*.png"))
    gen = Generator(tiny_cfg, tiny_clip, 2)
    with torch.no_grad():
        gen.upsampler.to_rgb.weight.normal_(0, 0.05)  # a residual that is not negligible
    caps = Captions(folder, text="a photo")
    reports = {}
    for name, lanes in (("inline", Lanes(1)), ("lanes", Lanes(2, torch_threads=1))):
        reports[name] = run(Upscaler(gen, torch.device("cpu"), tile=0), folder, images, tmp_path / name, caps,
                            batch_size=batch_size, lanes=lanes)
    assert [i.name for i, *_ in reports["lanes"].done] == [p.name for p in images]  # reported in input order
    for p in images:
        a = np.asarray(Image.open(tmp_path / "inline" / p.name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "lanes" / p.name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # thread counts may change float summation order only


def test_an_accelerator_is_driven_from_the_callers_thread_and_lanes_write(tiny_cfg, tiny_clip, tmp_path,
                                                                        monkeypatch):
    folder = tmp_path / "lr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(12, 16)] * 4 + [(9, 9)] * 2 + [(12, 16)] * 3):
        # 7 is gray and 8 has alpha: batches holding them are quantised on the host, the rest on the "device"
        mode = {7: "L", 8: "RGBA"}.get(i, "RGB")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).convert(mode).save(folder / f"{i}.png")
    images = sorted(folder.glob("*.png"))
    gen = Generator(tiny_cfg, tiny_clip, 2)
    with torch.no_grad():
        gen.upsampler.to_rgb.weight.normal_(0, 0.05)
    forward_threads, write_threads = set(), set()

    def forward_hook(module, args):
        forward_threads.add(threading.current_thread().name)
        if args[0].shape[-1] == 9:
            raise RuntimeError("device error on this batch")

    import clipsr_cli.pipeline.upscale as upscale_module
    import clipsr_cli.pipeline.upscaler as upscaler_module

    real_write, real_quantise = upscale_module.write_image, upscaler_module.quantise
    quantised = []
    monkeypatch.setattr(upscaler_module, "quantise", lambda x: (quantised.append(len(x)), real_quantise(x))[1])
    monkeypatch.setattr(upscale_module, "write_image",
                        lambda *a: (write_threads.add(threading.current_thread().name), real_write(*a))[1])
    caps = Captions(folder, text="a photo")
    reference = run(Upscaler(gen, torch.device("cpu"), tile=0), folder, images, tmp_path / "ref", caps,
                    batch_size=2, lanes=Lanes(1))
    assert quantised == []  # the CPU's lanes quantise in numpy
    handle = gen.register_forward_pre_hook(forward_hook)
    forward_threads.clear()
    write_threads.clear()
    up = Upscaler(gen, torch.device("cpu"), tile=0)
    up.forward_in_lanes = False  # what an accelerator gets
    report = run(up, folder, images, tmp_path / "acc", caps, batch_size=2, lanes=Lanes(2, 1))
    handle.remove()
    assert forward_threads == {threading.current_thread().name}
    assert quantised == [2, 2]  # 0-1 and 2-3; 6-7 holds a gray image, 8 has alpha
    assert write_threads and all(name.startswith("clipsr-lane") for name in write_threads)
    assert [o.image.name for o in report.failed] == ["4.png", "5.png"]  # the batch whose forward failed
    assert "device error on this batch" in report.failed[0].reason
    assert [i.name for i, *_ in report.done] == [i.name for i, *_ in reference.done if i.name not in ("4.png", "5.png")]
    for _, out, _ in report.done:
        a = np.asarray(Image.open(out), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "ref" / out.name), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1
    assert Image.open(tmp_path / "acc" / "7.png").mode == "L" and Image.open(tmp_path / "acc" / "8.png").mode == "RGBA"


def test_images_decode_in_the_callers_thread_on_the_cpu_and_in_threads_for_an_accelerator(
        tiny_cfg, tiny_clip, tmp_path, monkeypatch):
    import clipsr_cli.pipeline.upscale as upscale_module

    folder = tmp_path / "lr"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.png")
    images = sorted(folder.glob("*.png"))
    real_load, decoded_in = upscale_module.load_image, set()
    monkeypatch.setattr(upscale_module, "load_image",
                        lambda p: (decoded_in.add(threading.current_thread().name), real_load(p))[1])
    gen = Generator(tiny_cfg, tiny_clip, 2)
    caps = Captions(folder, text="a photo")
    for accelerator in (False, True):
        decoded_in.clear()
        up = Upscaler(gen, torch.device("cpu"), tile=0)
        up.forward_in_lanes = not accelerator
        report = run(up, folder, images, tmp_path / f"out{accelerator}", caps, batch_size=2, lanes=Lanes(2, 1))
        assert len(report.done) == 5
        caller = threading.current_thread().name
        assert (caller not in decoded_in) if accelerator else (decoded_in == {caller})


def test_a_failed_write_fails_that_image_only(tiny_cfg, tiny_clip, tmp_path):
    folder = tmp_path / "lr"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8), "red").save(folder / f"{name}.png")
    out = tmp_path / "sr"
    (out / "b.png").mkdir(parents=True)  # a folder where b's output should go: the rename fails
    report = run(Upscaler(Generator(tiny_cfg, tiny_clip, 2), torch.device("cpu"), tile=0), folder,
                 sorted(folder.glob("*.png")), out, Captions(folder, text="x"), batch_size=3, lanes=Lanes(2, 1))
    assert [i.name for i, *_ in report.done] == ["a.png", "c.png"]
    assert [o.image.name for o in report.failed] == ["b.png"]
    assert not list(out.glob(".*.tmp"))  # no temporary left behind


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_full_disk_stops_the_run_at_its_first_failed_write(tiny_cfg, tiny_clip, tmp_path, monkeypatch, lanes):
    import errno

    from clipsr_cli.pipeline import upscale

    folder = tmp_path / "lr"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / f"{i:02d}.png")
    real_write, written = upscale.write_image, []

    def write_until_full(path, arr):
        if len(written) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, arr)
        written.append(path.name)

    monkeypatch.setattr(upscale, "write_image", write_until_full)
    report = run(Upscaler(Generator(tiny_cfg, tiny_clip, 2), torch.device("cpu"), tile=0), folder,
                 sorted(folder.glob("*.png")), tmp_path / "sr", Captions(folder, text="x"), batch_size=1,
                 lanes=Lanes(lanes, 1))
    assert "No space left on device writing" in report.stopped and "--skip-existing" in report.stopped
    done = [i.name for i, *_ in report.done]
    on_disk = sorted(p.name for p in (tmp_path / "sr").iterdir())
    # every whole file on disk is reported done, batches in flight at the stop included (#25 item 3)
    assert sorted(done) == sorted(written) == on_disk
    if lanes == 1:
        assert done == ["00.png", "01.png", "02.png"]
    assert 1 <= len(report.failed) <= lanes + 2  # those in flight that met the full disk; the rest never tried
    assert len(done) + len(report.failed) < 12  # the run stopped: not every input was tried


def test_cancel_drops_queued_work_and_reports_nothing_more():
    lanes, started, reported = Lanes(2), [], []
    release = threading.Event()

    def work(i):
        started.append(i)
        release.wait(5)
        return i

    for i in range(3):  # two run, the third waits for a free lane
        lanes.submit(lambda i=i: work(i), lambda r, e: reported.append(r))
    deadline = time.monotonic() + 5
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    lanes.cancel()
    release.set()
    time.sleep(0.05)
    assert sorted(started) == [0, 1] and reported == []


def test_an_accelerator_runs_one_lane_at_a_time_the_cpu_all(tiny_cfg, tiny_clip):
    gen = Generator(tiny_cfg, tiny_clip, 2)
    active, most = [0], []
    guard = threading.Lock()

    def tracked(fn):
        def call(*args):
            with guard:
                active[0] += 1
                most.append(active[0])
            time.sleep(0.05)  # long enough for the other lane to arrive
            try:
                return fn(*args)
            finally:
                with guard:
                    active[0] -= 1
        return call

    gen.forward, gen.encode_text = tracked(gen.forward), tracked(gen.encode_text)
    for device_lock, expected in ((threading.Lock(), 1), (None, 2)):  # a GPU's lock / the CPU's none
        up = Upscaler(gen, torch.device("cpu"), tile=0)
        if device_lock is not None:
            up._device_lock = device_lock  # what Upscaler gives a cuda or mps device
        most.clear()
        lanes = Lanes(2, torch_threads=1)
        for i in range(4):
            lanes.submit(lambda i=i: up.upscale_batch([torch.rand(3, 8, 8)], [f"caption {i}"]), lambda r, e: None)
        lanes.close()
        assert max(most) == expected


def test_an_input_gone_since_listing_is_reported_while_existing_outputs_are_checked(tiny_cfg, tiny_clip, tmp_path):
    folder, out = tmp_path / "lr", tmp_path / "sr"
    folder.mkdir()
    out.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8), "red").save(folder / f"{name}.png")
    (out / "a.png").write_bytes(b"old output")  # exists: the overwrite check reads the inputs' identities
    images = sorted(folder.glob("*.png"))
    (folder / "b.png").unlink()  # gone between listing and planning
    report = run(Upscaler(Generator(tiny_cfg, tiny_clip, 2), torch.device("cpu"), tile=0), folder, images, out,
                 Captions(folder, text="x"), lanes=Lanes(1))
    assert [i.name for i, *_ in report.done] == ["a.png"]
    assert [o.image.name for o in report.failed] == ["b.png"]
    assert Image.open(out / "a.png").size == (16, 16)  # an old output is replaced, it is no input


def test_worker_processes_decode_and_write_what_threads_do(tiny_cfg, tiny_clip, tmp_path):
    """An accelerator's host: inputs decoded and outputs written in worker
    processes give the files the threads give, in the report's input order;
    a broken input and an unwritable output are reported by name; the outputs
    of a gray image and one with alpha keep their modes."""
    from clipsr_cli.pipeline.host_workers import HostWorkers, worker_counts

    folder = tmp_path / "lr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(12, 16)] * 5 + [(9, 9)] * 4):
        mode = {6: "L", 7: "RGBA"}.get(i, "RGB")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).convert(mode).save(folder / f"{i}.png")
    (folder / "3.png").write_bytes(b"not a png")
    images = sorted(folder.glob("*.png"))
    (tmp_path / "acc").mkdir()
    (tmp_path / "acc" / "5.png").mkdir()  # an output path that cannot be written
    gen = Generator(tiny_cfg, tiny_clip, 2)
    with torch.no_grad():
        gen.upsampler.to_rgb.weight.normal_(0, 0.05)
    caps = Captions(folder, text="a photo")
    reference = run(Upscaler(gen, torch.device("cpu"), tile=0), folder, images, tmp_path / "ref", caps,
                    batch_size=2, lanes=Lanes(1))
    up = Upscaler(gen, torch.device("cpu"), tile=0)
    up.forward_in_lanes = False  # what an accelerator gets: forward here, lanes hand the writes on
    host = HostWorkers(2, 2)
    try:
        report = run(up, folder, images, tmp_path / "acc", caps, batch_size=2, lanes=Lanes(2), host=host)
        assert host._decode._processes and host._write._processes  # the work went to processes
    finally:
        host.close()
    assert [o.image.name for o in report.failed] == ["3.png", "5.png"]
    assert "not a readable image" in report.failed[0].reason and report.failed[0].kind == "not a readable image"
    assert "5.png" in report.failed[1].reason and isinstance(report.failed[1].kind, str)
    assert [i.name for i, *_ in report.done] == [i.name for i, *_ in reference.done if i.name != "5.png"]
    for _, out, _ in report.done:
        a = np.asarray(Image.open(out), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "ref" / out.name), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1
    assert Image.open(tmp_path / "acc" / "6.png").mode == "L" and Image.open(tmp_path / "acc" / "7.png").mode == "RGBA"
    assert not list((tmp_path / "acc").glob("*.tmp*"))  # nothing half-written left behind
    assert worker_counts(16) == (7, 7) and worker_counts(2) == (1, 1) and worker_counts(64) == (8, 8)
    # the CPU computes with its own cores, and a short run ends before workers pay off
    assert HostWorkers.for_run(torch.device("cpu"), 1000, cores=16) is None
    assert HostWorkers.for_run(torch.device("cuda"), 10, cores=16) is None
    assert HostWorkers.for_run(torch.device("cuda"), 1000, cores=4) is None  # threads were faster on few cores
    workers = HostWorkers.for_run(torch.device("cuda"), 1000, cores=16)
    assert workers.describe() == "7 decoding + 7 writing processes"
    workers.close()
