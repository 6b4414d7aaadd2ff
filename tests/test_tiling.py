"""Tiled inference (blending, tolerance, no seams, bounded tiles, OOM retry) and batching."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipsr_cli.io.captions import Captions
from clipsr_cli.model.generator import Generator
from clipsr_cli.pipeline import tiling
from clipsr_cli.pipeline.lanes import Lanes
from clipsr_cli.pipeline.tiling import is_out_of_memory, tiled
from clipsr_cli.pipeline.upscale import run
from clipsr_cli.pipeline.upscaler import Upscaler


def test_blending_is_exact_for_a_local_operation():
    lr = torch.rand(2, 3, 37, 53)
    up = lambda t: F.interpolate(t, scale_factor=4, mode="nearest")  # noqa: E731
    for tile, pad in ((8, 0), (10, 3), (16, 8), (100, 4)):
        assert torch.allclose(tiled(up, lr, 4, tile, pad), up(lr), atol=1e-6), (tile, pad)


def test_finishing_bands_gives_the_canvas_bytes_and_holds_only_the_rows_tiles_reach():
    from clipsr_cli.pipeline.upscaler import quantise

    lr = torch.rand(2, 3, 37, 53)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    fn = lambda t: F.interpolate(conv(t), scale_factor=4, mode="nearest") * 1.2  # noqa: E731 (overflows [0, 1])
    for tile, pad in ((8, 0), (10, 3), (4, 8), (100, 4)):
        bands = []

        def finish(band, top):
            bands.append((top, band.shape[2]))
            return quantise(band.clamp(0, 1))

        with torch.no_grad():
            whole = quantise(tiled(fn, lr, 4, tile, pad).clamp(0, 1))
            assert torch.equal(tiled(fn, lr, 4, tile, pad, finish=finish), whole), (tile, pad)
        tops, heights = zip(*bands)
        assert list(tops) == [sum(heights[:i]) for i in range(len(bands))] and sum(heights) == 37 * 4
        assert max(heights) <= (tile + 2 * pad) * 4, (tile, pad, bands)


def _smooth(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


def visible_residual(gen: Generator, lr: torch.Tensor, rms: float = 0.06) -> Generator:
    """`gen` with random RGB weights scaled so that on `lr` the network adds `rms` to
    bicubic (like a trained one, and whatever the preset's upsampler: the residual is
    linear in those weights, whose bias is zero)."""
    from clipsr_cli.model.kernels import bicubic_upsample

    torch.manual_seed(0)
    weight = gen.upsampler.to_rgb.weight
    with torch.no_grad():
        weight.normal_(0, 0.05)
        residual = gen.eval()(lr[None], gen.encode_text(["a photo"])) - bicubic_upsample(lr[None], gen.scale)
        weight.mul_(rms / float(residual.square().mean().sqrt()))
    return gen


def test_tiled_matches_untiled_within_tolerance_and_has_no_seam(tiny_cfg, tiny_clip):
    lr = _smooth(64, 96)
    gen = visible_residual(Generator(tiny_cfg, tiny_clip, 4), lr)
    whole = Upscaler(gen, torch.device("cpu"), tile=0).upscale(lr, "a photo", None)
    upscaler = Upscaler(gen, torch.device("cpu"), tile=32, tile_pad=8)
    parts = upscaler.upscale(lr, "a photo", None)
    diff = parts - whole
    # a tile gives the network less context (the CLIP-ViT attends over the whole
    # token grid, its positions resampled to the tile's), so the network's part
    # of the output differs somewhat.  Stated tolerance: tiled and untiled agree
    # to > 30 dB PSNR (31.7 dB here), and differ by < half of what the network adds to bicubic.
    bicubic = F.interpolate(lr[None], scale_factor=4, mode="bicubic", align_corners=False)[0]
    added = (whole - bicubic.clamp(0, 1)).abs().mean()
    assert -10 * torch.log10(diff.square().mean()) > 30
    assert diff.abs().mean() < 0.5 * added
    # no seam: across the tile boundaries (LR 32 -> SR column/row 128), the step
    # between neighbouring pixels is no larger than elsewhere in the image
    dx = (parts[..., 1:] - parts[..., :-1]).abs().mean(dim=(0, 1))
    dy = (parts[:, 1:] - parts[:, :-1]).abs().mean(dim=(0, 2))
    assert dx[127] < 3 * dx.median() + 1e-3 and dx[255] < 3 * dx.median() + 1e-3
    assert dy[127] < 3 * dy.median() + 1e-3


@pytest.mark.parametrize("outscale, size", [(2.5, (160, 240)), (6, (384, 576)), (2.3, (147, 220))])
def test_outscale_resizes_the_network_output_tiled_or_not(tiny_cfg, tiny_clip, outscale, size):
    lr = _smooth(64, 96)
    gen = visible_residual(Generator(tiny_cfg, tiny_clip, 4), lr)
    whole = Upscaler(gen, torch.device("cpu"), tile=0, outscale=outscale).upscale(lr, "a photo", None)
    assert whole.shape == (3, *size)  # int(side * outscale), Real-ESRGAN's size
    with torch.inference_mode():  # resized before it is clamped to [0, 1]
        net = gen.eval()(lr[None], gen.encode_text(["a photo"]))
    expected = F.interpolate(net, size=size, mode="bicubic", antialias=outscale < 4).clamp(0, 1)[0]
    assert torch.allclose(whole, expected, atol=1e-5)
    parts = Upscaler(gen, torch.device("cpu"), tile=32, tile_pad=8, outscale=outscale).upscale(lr, "a photo", None)
    assert parts.shape == whole.shape and -10 * torch.log10((parts - whole).square().mean()) > 30
    assert Upscaler(gen, torch.device("cpu"), tile=0, outscale=4).outscale is None  # the network's own: no resize


def test_tiles_bound_what_reaches_the_network(tiny_cfg, tiny_clip):
    gen = Generator(tiny_cfg, tiny_clip, 4)
    seen = []
    gen.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    out = Upscaler(gen, torch.device("cpu"), tile=24, tile_pad=4).upscale(_smooth(70, 50), "x", None)
    assert out.shape == (3, 280, 200)
    assert len(seen) == 9 and max(max(s) for s in seen) <= 24 + 2 * 4  # never the whole 70x50 image


def test_out_of_memory_halves_the_tile_and_retries(tiny_cfg, tiny_clip):
    gen = Generator(tiny_cfg, tiny_clip, 4)
    real = gen.forward

    def forward(lr, cond):
        if max(lr.shape[-2:]) > 20:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(lr, cond)

    gen.forward = forward
    warnings = []
    upscaler = Upscaler(gen, torch.device("cpu"), warn=warnings.append, tile=0, tile_pad=2)
    out = upscaler.upscale(_smooth(40, 40), "x", None)
    assert out.shape == (3, 160, 160)
    assert upscaler.tile == 10 and warnings == ["out of memory: retrying with --tile 20",
                                                 "out of memory: retrying with --tile 10"]
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_out_of_memory_splits_a_batch_before_tiling_and_later_batches_stay_small(tiny_cfg, tiny_clip, tmp_path):
    folder = tmp_path / "lr"
    folder.mkdir()
    for i in range(6):
        arr = (_smooth(12, 16, seed=i).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
    images = sorted(folder.glob("*.png"))
    gen = Generator(tiny_cfg, tiny_clip, 4)
    with torch.no_grad():
        gen.upsampler.to_rgb.weight.normal_(0, 0.05)
    caps = Captions(folder, text="a photo")
    run(Upscaler(gen, torch.device("cpu"), tile=0), folder, images, tmp_path / "ref", caps)
    real, calls = gen.forward, []

    def forward(lr, cond):
        calls.append(lr.shape[0])
        assert cond.sentence.shape[0] == lr.shape[0]  # each half keeps its own captions
        if lr.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(lr, cond)

    gen.forward = forward
    warnings = []
    upscaler = Upscaler(gen, torch.device("cpu"), warn=warnings.append, tile=0)
    report = run(upscaler, folder, images, tmp_path / "oom", caps, batch_size=4, lanes=Lanes(1))
    assert len(report.done) == 6 and not report.failed
    assert calls == [4, 2, 2, 2] and upscaler.batch_cap == 2 and upscaler.tile == 0  # never tiled
    assert warnings == ["out of memory: retrying 2 image(s) at a time"]
    for p in images:
        a = np.asarray(Image.open(tmp_path / "ref" / p.name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "oom" / p.name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1


def test_same_size_images_are_batched_and_give_the_same_outputs(tiny_cfg, tiny_clip, tmp_path):
    folder = tmp_path / "lr"
    folder.mkdir()
    for i, size in enumerate([(24, 16), (24, 16), (24, 16), (20, 20)]):
        arr = (_smooth(size[1], size[0], seed=i).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
    images = sorted(folder.glob("*.png"))
    gen = Generator(tiny_cfg, tiny_clip, 4)
    batches = []
    gen.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    caps = Captions(folder, text="a photo")
    one = run(Upscaler(gen, torch.device("cpu"), tile=0), folder, images, tmp_path / "one", caps)
    assert batches == [1, 1, 1, 1] and len(one.done) == 4
    batches.clear()
    many = run(Upscaler(gen, torch.device("cpu"), tile=0), folder, images, tmp_path / "many", caps, batch_size=8)
    assert sorted(batches) == [1, 3] and len(many.done) == 4  # lanes may finish in either order
    for i in range(4):
        a = np.asarray(Image.open(tmp_path / "one" / f"{i}.png"), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "many" / f"{i}.png"), dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # uint8 rounding of float differences only
    batches.clear()
    automatic = Upscaler(gen, torch.device("cpu"), tile=0)
    assert automatic.auto_batch(torch.zeros(3, 16, 24)) == 8  # small images: the CPU's cap
    automatic._batches[(16, 24)] = 2  # what a device with room for two 24x16 images would say
    run(automatic, folder, images, tmp_path / "auto", caps, batch_size=None)
    assert sorted(batches) == [1, 1, 2]  # 2 + 1 of the 24x16 images, then the 20x20 one
    batches.clear()
    tiled_run = run(Upscaler(gen, torch.device("cpu"), tile=20, tile_pad=2), folder, images, tmp_path / "t", caps,
                    batch_size=8)
    assert len(tiled_run.done) == 4
    assert batches == [1] * 7  # 24x16 images tile (2 tiles each) and go alone; 20x20 fits one tile
    # a tiled PNG, quantised band by band, holds the bytes of its float canvas quantised
    from clipsr_cli.io.images import load_image
    from clipsr_cli.pipeline.upscaler import quantise

    canvas = Upscaler(gen, torch.device("cpu"), tile=20, tile_pad=2).upscale(load_image(images[0]).rgb, "a photo", None)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t" / "0.png")), quantise(canvas[None].clone())[0].numpy())


def test_automatic_tile_follows_free_memory_and_stays_small_on_the_cpu(monkeypatch):
    monkeypatch.setattr(tiling, "available_memory", lambda device: 64 << 30)
    assert tiling.auto_tile(1000.0, torch.device("cpu")) == tiling.CPU_MAX_TILE
    assert tiling.auto_tile(1000.0, torch.device("cuda")) == 1024  # not queried: memory is patched
    monkeypatch.setattr(tiling, "available_memory", lambda device: 100 << 20)
    assert tiling.auto_tile(1000.0, torch.device("cuda")) == 192  # 192^2 * 1000 B <= 40 MB < 256^2 * 1000 B


def test_automatic_batch_fills_free_memory_up_to_a_cap_per_device(monkeypatch):
    monkeypatch.setattr(tiling, "available_memory", lambda device: 100 << 20)
    assert tiling.auto_batch(1000.0, 64 * 64, 4, torch.device("cpu")) == 5  # 20 MiB per lane // 4.1 MB
    assert tiling.auto_batch(1000.0, 16 * 16, 4, torch.device("cpu")) == tiling.CPU_AUTO_BATCH_MAX
    assert tiling.auto_batch(1000.0, 64 * 64, 4, torch.device("cuda")) == 10  # 40 MiB // 4.1 MB
    assert tiling.auto_batch(1000.0, 16 * 16, 4, torch.device("cuda")) == tiling.AUTO_BATCH_MAX
    assert tiling.auto_batch(1000.0, 1024 * 1024, 4, torch.device("cuda")) == 1  # never 0
    monkeypatch.setattr(tiling, "available_memory", lambda device: 80 << 30)
    # 512x512 LR at x4: 50 MB of float output per image, 10 in 512 MiB of host memory
    assert tiling.auto_batch(10.0, 512 * 512, 4, torch.device("cuda")) == 10


def test_free_host_memory_is_known_or_guessed_small_on_every_system(monkeypatch, tmp_path):
    import os

    linux = tiling.host_available_memory()
    assert 0 < linux and linux == tiling.available_memory(torch.device("cpu"))
    monkeypatch.setattr(tiling, "MEMINFO", str(tmp_path / "no-meminfo"))  # not Linux
    real_sysconf = os.sysconf

    def macos_sysconf(name):  # macOS counts physical pages, not free ones
        if name == "SC_AVPHYS_PAGES":
            raise ValueError("unrecognized configuration name")
        return real_sysconf(name)

    monkeypatch.setattr(os, "sysconf", macos_sysconf)
    assert tiling.host_available_memory() == real_sysconf("SC_PAGE_SIZE") * real_sysconf("SC_PHYS_PAGES") // 2
    monkeypatch.delattr(os, "sysconf")  # Windows
    assert tiling.host_available_memory() == tiling.UNKNOWN_FREE_MEMORY


def test_free_mps_memory_is_what_metal_recommends_less_what_it_holds(monkeypatch):
    mps = torch.device("mps")
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 12 << 30)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 5 << 30)
    assert tiling.available_memory(mps) == 7 << 30

    def older_torch():
        raise AttributeError("no such function")

    monkeypatch.setattr(torch.mps, "recommended_max_memory", older_torch)
    assert tiling.available_memory(mps) == tiling.host_available_memory()


@pytest.mark.parametrize("kind", ["cuda", "mps", "cpu"])
def test_an_out_of_memory_retry_releases_the_devices_cached_blocks(monkeypatch, kind):
    from clipsr_cli.pipeline.devices import release_cached_memory

    released = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append("cuda"))
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: released.append("mps"))
    release_cached_memory(torch.device(kind))
    assert released == ([] if kind == "cpu" else [kind])


def test_a_tiled_output_is_counted_as_bands(tiny_cfg, tiny_clip):
    from clipsr_cli.io.images import Decoded

    upscaler = Upscaler(Generator(tiny_cfg, tiny_clip, 8), torch.device("cpu"), tile=64, tile_pad=8)
    band = (64 + 16) * 8 * 4096  # output pixels of the rows tiles still reach
    rgb = Decoded(torch.zeros(3, 512, 512), None, False, 8)
    assert upscaler.output_host_bytes(rgb) == 4096 * 4096 * 6 + band * 12  # uint8 image, encoder copy, float rows
    rgba16 = Decoded(torch.zeros(3, 512, 512), torch.zeros(1, 512, 512), False, 16)
    assert upscaler.output_host_bytes(rgba16) == 4096 * 4096 * (16 + 4) + band * 4 * 7  # + the float alpha
    assert upscaler.output_host_bytes(rgb) < tiling.output_host_bytes(4096, 4096, False, 8) / 2  # whole canvas
    small = Decoded(torch.zeros(3, 32, 32), None, False, 8)  # not tiled: a float output
    assert upscaler.output_host_bytes(small) == tiling.output_host_bytes(256, 256, False, 8)


def test_tiled_outputs_of_every_kind_are_the_whole_canvas_quantised(tiny_cfg, tiny_clip, tmp_path):
    from clipsr_cli.io.images import load_image, output_array
    from clipsr_cli.io.png import write_png

    gen = Generator(tiny_cfg, tiny_clip, 2)
    folder = tmp_path / "lr"
    folder.mkdir()
    rgb = (_smooth(30, 44).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    rgba = np.dstack([rgb, np.linspace(0, 255, 44, dtype=np.uint8)[None].repeat(30, 0)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    write_png(folder / "deep.png", rgb.astype(np.uint16) * 257)
    images = sorted(folder.glob("*.png"))
    report = run(Upscaler(gen, torch.device("cpu"), tile=16, tile_pad=4), folder, images, tmp_path / "sr",
                 Captions(folder, text="a photo"))
    assert len(report.done) == 3, report.failed
    whole = Upscaler(gen, torch.device("cpu"), tile=16, tile_pad=4)
    for path in images:
        d = load_image(path)
        alpha = None if d.alpha is None else F.interpolate(d.alpha[None], scale_factor=2, mode="bicubic")[0].clamp(0, 1)
        canvas = whole.upscale(d.rgb, "a photo", None).clone()
        expected = output_array(tmp_path / "sr" / path.name, canvas, alpha, d.gray, d.bits)
        written = np.asarray(Image.open(tmp_path / "sr" / path.name)) if path.name != "deep.png" else \
            (load_image(tmp_path / "sr" / path.name).rgb.permute(1, 2, 0).numpy() * 65535).round()
        assert np.array_equal(written.reshape(expected.shape), expected), path.name


def test_a_batch_that_needs_tiles_by_the_time_it_runs_goes_image_by_image(tiny_cfg, tiny_clip, tmp_path):
    from clipsr_cli.io.images import output_array
    from clipsr_cli.pipeline.upscale import _Item, _upscale_and_write

    upscaler = Upscaler(Generator(tiny_cfg, tiny_clip, 2), torch.device("cpu"), tile=0)
    rgbs = [_smooth(12, 16, seed=i) for i in range(3)]
    batch = [_Item(None, rgb, "a photo", tmp_path / f"{i}.png", None, False, 8) for i, rgb in enumerate(rgbs)]
    upscaler.tile = 8  # shrank (out of memory in another lane) since the batch was queued whole
    assert _upscale_and_write(upscaler, batch) == [None] * 3
    for i, rgb in enumerate(rgbs):
        expected = output_array(tmp_path / "x.png", upscaler.upscale(rgb, "a photo", None).clone())
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{i}.png")), expected)
