"""Every image mode a user's folder may hold is read and written back faithfully;
every kind of bad file is refused with one line naming it."""

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from clipsr_cli.io import png
from clipsr_cli.io.images import ImageError, load_image, save_image


def _random(h, w, c, dtype=np.uint8, seed=0):
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top + 1, (h, w, c)).astype(dtype)


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _reference_png(arr16: np.ndarray) -> bytes:
    """A 16-bit PNG written the slow, obvious way, cycling through all five
    row filters (None, Sub, Up, Average, Paeth), as an independent encoder."""
    h, w, c = arr16.shape
    rows = [list(arr16[y].astype(">u2").tobytes()) for y in range(h)]
    bpp = 2 * c
    raw = bytearray()
    prior = [0] * len(rows[0])
    for y, row in enumerate(rows):
        kind = y % 5
        out = []
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prior[i]
            cc = prior[i - bpp] if i >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else cc)
            out.append((x - pred) % 256)
        raw += bytes([kind] + out)
        prior = row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    return png.SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(raw))) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_color_png_from_another_encoder_is_read_exactly(tmp_path, channels):
    arr = _random(11, 7, channels, np.uint16)
    path = tmp_path / "ref.png"
    path.write_bytes(_reference_png(arr))
    d = load_image(path)
    assert d.bits == 16 and not d.gray
    got = torch.cat([d.rgb, d.alpha]) if channels == 4 else d.rgb
    expect = torch.from_numpy(arr.astype(np.float32) / 65535).permute(2, 0, 1)
    assert torch.equal(torch.round(got * 65535), torch.round(expect * 65535))
    assert (d.alpha is not None) == (channels == 4)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("blocks", [False, True])
def test_png_encoder_round_trips_through_pillow(tmp_path, monkeypatch, channels, dtype, blocks):
    if blocks:  # the streamed path of large images: several blocks, the row above carries over
        monkeypatch.setattr(png, "ONE_SHOT_BYTES", 0)
        monkeypatch.setattr(png, "ROWS_PER_BLOCK", 4)
    arr = _random(13, 9, channels, dtype, seed=channels)
    path = tmp_path / "x.png"
    png.write_png(path, arr)
    if dtype == np.uint16 and channels >= 3:
        high, low = png.png16_bytes(path)
        back = np.asarray(high).astype(np.uint16) * 256 + np.asarray(low)
    elif dtype == np.uint16 and channels == 1:
        back = np.asarray(Image.open(path)).astype(np.uint16)[..., None]
    elif dtype == np.uint16:  # Pillow reads 16-bit gray+alpha as RGBA, high bytes only
        rgba = np.asarray(Image.open(path))
        assert np.array_equal(rgba[..., [0, 3]], (arr >> 8).astype(np.uint8))
        return
    else:
        im = Image.open(path)
        assert im.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
        back = np.asarray(im).reshape(13, 9, channels)
    assert np.array_equal(back, arr)


@pytest.mark.parametrize("writev", [True, False])
def test_png_writing_survives_short_writes_and_has_valid_crcs(tmp_path, monkeypatch, writev):
    arr = _random(40, 30, 3, np.uint8, seed=7)
    png.write_png(tmp_path / "whole.png", arr)
    real_write, real_writev = os.write, os.writev
    if writev:  # the OS takes at most 5 bytes per call, cutting parts and buffers short
        monkeypatch.setattr(os, "writev", lambda fd, bufs: real_writev(fd, [bytes(b)[:5] for b in bufs[:1]]))
    else:
        monkeypatch.delattr(os, "writev")
        monkeypatch.setattr(os, "write", lambda fd, buf: real_write(fd, bytes(buf)[:5]))
    png.write_png(tmp_path / "short.png", arr)
    data = (tmp_path / "short.png").read_bytes()
    assert data == (tmp_path / "whole.png").read_bytes()
    pos = len(png.SIGNATURE)
    while pos < len(data):  # every chunk's CRC is zlib's CRC-32 of its type and data
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        body = data[pos + 4 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(body)
        pos += 12 + length
    assert np.array_equal(np.asarray(Image.open(tmp_path / "short.png")), arr)


def test_up_filter_predicts_each_row_from_the_one_above():
    rows = np.tile(np.arange(60, dtype=np.uint8)[None], (20, 1))  # every row the same
    rows[5] += 3
    filtered = png.up_filter(rows, np.zeros(60, np.uint8))
    assert (filtered[:, 0] == png.UP).all()
    assert np.array_equal(filtered[0, 1:], rows[0])  # the top row is predicted from zeros
    assert (filtered[5, 1:] == 3).all() and (filtered[6, 1:] == 253).all()  # wraps modulo 256
    assert not filtered[[1, 2, 3, 4, 7, 8], 1:].any()


def _save_pil(path, mode, **kw):
    arr = _random(10, 12, 3)
    im = Image.fromarray(arr)
    if mode == "P+transparency":
        im = im.convert("P")
        im.info["transparency"] = 0
        im.save(path, transparency=0)
    else:
        im.convert(mode).save(path, **kw)


@pytest.mark.parametrize("name,mode,expect", [
    ("rgb.png", "RGB", ("RGB", 3)),
    ("gray.png", "L", ("L", 1)),
    ("graya.png", "LA", ("LA", 2)),
    ("rgba.png", "RGBA", ("RGBA", 4)),
    ("pal.png", "P", ("RGB", 3)),
    ("palt.png", "P+transparency", ("RGBA", 4)),
    ("cmyk.jpg", "CMYK", ("RGB", 3)),
    ("rgb.webp", "RGB", ("RGB", 3)),
    ("rgb.tif", "RGB", ("RGB", 3)),
    ("rgb.bmp", "RGB", ("RGB", 3)),
])
def test_every_mode_is_read_and_written_back(tmp_path, name, mode, expect):
    src = tmp_path / name
    _save_pil(src, mode)
    d = load_image(src)
    assert d.rgb.shape == (3, 10, 12) and d.rgb.dtype == torch.float32 and d.rgb.is_contiguous()
    with Image.open(src) as im:  # Pillow's own RGB, scaled to [0, 1] in float32
        want = np.asarray(im.convert("RGBA" if im.mode == "P" else im.mode).convert("RGB"), np.float32) / 255
    assert torch.equal(d.rgb, torch.from_numpy(want).permute(2, 0, 1))
    out = tmp_path / "out" / f"x{src.suffix if src.suffix in ('.jpg', '.webp') else '.png'}"
    save_image(out, d.rgb, d.alpha, d.gray, d.bits)
    im = Image.open(out)
    assert im.size == (12, 10)
    want_mode, _ = expect
    if out.suffix == ".jpg":
        want_mode = "L" if d.gray else "RGB"
    elif out.suffix == ".webp":
        want_mode = "RGBA" if d.alpha is not None else "RGB"
    assert im.mode == want_mode
    if src.suffix in (".png", ".bmp", ".tif"):  # lossless: values come back exactly
        again = load_image(out)
        assert torch.allclose(again.rgb, d.rgb, atol=1 / 255 if d.gray else 1e-6)


def test_16bit_gray_png_stays_16bit(tmp_path):
    arr = _random(9, 8, 1, np.uint16)[..., 0]
    src = tmp_path / "g16.png"
    Image.fromarray(arr).save(src)
    d = load_image(src)
    assert d.gray and d.bits == 16
    out = tmp_path / "o.png"
    save_image(out, d.rgb, None, d.gray, d.bits)
    assert np.array_equal(np.asarray(Image.open(out)).astype(np.uint16), arr)


def test_16bit_rgb_output_keeps_low_bits(tmp_path):
    rgb = torch.rand(3, 6, 5)
    out = tmp_path / "o.png"
    save_image(out, rgb, None, False, 16)
    d = load_image(out)
    assert d.bits == 16
    assert torch.allclose(d.rgb, rgb, atol=1 / 65535)  # 8 bits would be off by up to 1/510


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(src, exif=exif, quality=100)
    d = load_image(src)
    assert d.rgb.shape == (3, 20, 10)  # displayed upright: portrait
    assert d.rgb[:, :10].mean() > 0.9 and d.rgb[:, 10:].mean() < 0.1  # white half now on top


def _truncated(path):
    full = path.with_suffix(".full.png")
    Image.fromarray(_random(64, 64, 3)).save(full)
    path.write_bytes(full.read_bytes()[:200])
    full.unlink()


def _bomb(path):
    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)  # 81 MP declared, a few bytes on disk
    data = zlib.compress(b"\0" * 100)
    path.write_bytes(png.SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


@pytest.mark.parametrize("make,reason", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("these are my notes"), "not a readable image"),
    (_truncated, "not a readable image"),
    (_bomb, "decompression bomb"),
])
def test_bad_files_are_refused_with_one_line_naming_them(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError) as e:
        load_image(path)
    msg = str(e.value)
    assert str(path) in msg and reason in msg and "\n" not in msg


def test_atomic_write_leaves_the_old_file_and_no_temporary_on_failure(tmp_path):
    from clipsr_cli.io.files import atomic_write

    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    # a missing folder is made, whatever a writer raises for it (safetensors has its own error type)
    calls = []

    def picky(tmp):
        calls.append(tmp)
        if not tmp.parent.is_dir():
            raise RuntimeError("I/O error: No such file or directory")
        tmp.write_bytes(b"deep")

    atomic_write(tmp_path / "a" / "b" / "out.bin", picky)
    assert (tmp_path / "a" / "b" / "out.bin").read_bytes() == b"deep" and len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["out.bin"]

    # another lane makes the folder between this write's failure and its retry
    def raced(tmp):
        if not tmp.parent.is_dir():
            tmp.parent.mkdir()
            raise FileNotFoundError(tmp)
        tmp.write_bytes(b"raced")

    atomic_write(tmp_path / "c" / "out.bin", raced)
    assert (tmp_path / "c" / "out.bin").read_bytes() == b"raced"


def test_stale_temporaries_of_the_given_outputs_alone_are_removed(tmp_path):
    import os
    import time

    from clipsr_cli.io.files import STALE_AFTER_S, remove_stale_temporaries

    old = time.time() - STALE_AFTER_S - 60
    stale = tmp_path / ".a.png.0123456789abcdef.tmp"  # a killed writer's, long ago
    young = tmp_path / ".a.png.fedcba9876543210.tmp"  # a writer still at work
    other = tmp_path / ".b.png.0123456789abcdef.tmp"  # not an output of this run
    mine = tmp_path / ".a.png.notes.tmp"  # not atomic_write's naming
    for path in (stale, young, other, mine):
        path.write_bytes(b"x")
    for path in (stale, other, mine):
        os.utime(path, (old, old))
    assert remove_stale_temporaries([tmp_path / "a.png", tmp_path / "gone" / "c.png"]) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (young, other, mine))


def test_outputs_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        save_image(tmp_path / "x.png", torch.rand(3, 4, 4))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o640


def test_quantising_on_the_device_gives_the_hosts_bytes(tmp_path):
    from clipsr_cli.io.images import is_plain_8bit, output_array
    from clipsr_cli.pipeline.upscaler import quantise

    k = torch.arange(256.0)
    # every level, the halfway points between levels (ties round to even) and values a hair either side
    values = torch.cat([k, k + 0.5, k + 0.5 - 1e-3, k + 0.5 + 1e-3, k - 0.2]) / 255
    x = torch.cat([values, torch.rand(3 * 40 * 40 - values.numel())]).reshape(1, 3, 40, 40).clamp(0, 1)
    assert np.array_equal(quantise(x.clone())[0].numpy(), output_array(tmp_path / "a.png", x[0]))
    assert not torch.equal(quantise(x.clone())[0].float() / 255, x[0].permute(1, 2, 0))  # it does round
    a, png, jpg = torch.ones(1, 40, 40), tmp_path / "a.png", tmp_path / "a.jpg"
    assert is_plain_8bit(png) and is_plain_8bit(jpg, bits=16)
    assert not is_plain_8bit(png, alpha=a) and not is_plain_8bit(png, bits=16) and not is_plain_8bit(jpg, gray=True)
    assert not is_plain_8bit(jpg, alpha=a)  # flattened over white on the host


def test_alpha_is_flattened_over_white_where_the_format_cannot_hold_it(tmp_path):
    from clipsr_cli.io.images import output_array

    rgb = torch.rand(1, 3, 10, 12).contiguous(memory_format=torch.channels_last)[0]
    alpha = torch.rand(1, 10, 12)
    alpha[:, :, :4] = 0  # fully transparent: white whatever its colour
    expected = np.rint(np.clip((1 - alpha * (1 - rgb)).permute(1, 2, 0).numpy() * 255, 0, 255)).astype(np.uint8)
    before = rgb.clone()
    jpg = output_array(tmp_path / "a.jpg", rgb, alpha)
    assert np.array_equal(jpg, expected) and (jpg[:, :4] == 255).all() and torch.equal(rgb, before)
    assert np.array_equal(output_array(tmp_path / "a.jpg", rgb.clone(), alpha, consume=True), expected)
    webp = output_array(tmp_path / "a.webp", rgb, alpha)  # keeps it: RGBA, colours untouched
    assert webp.shape[2] == 4 and np.array_equal(webp[..., :3], output_array(tmp_path / "a.jpg", rgb))


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_outputs_are_marked_as_clipsr_s_and_other_images_are_not(tmp_path, ext):
    from clipsr_cli.io.images import write_image, written_by_clipsr

    arr = (np.random.rand(10, 12, 3) * 255).astype(np.uint8)
    write_image(tmp_path / f"ours.{ext}", arr)
    Image.fromarray(arr).save(tmp_path / f"theirs.{ext}")
    assert written_by_clipsr(tmp_path / f"ours.{ext}")
    assert not written_by_clipsr(tmp_path / f"theirs.{ext}")
    assert load_image(tmp_path / f"ours.{ext}").rgb.shape == (3, 10, 12)
    assert not written_by_clipsr(tmp_path / "missing.png")


def test_output_array_leaves_the_tensor_alone_unless_told_to_consume_it(tmp_path):
    from clipsr_cli.io.images import output_array

    x = torch.rand(1, 3, 20, 30).contiguous(memory_format=torch.channels_last)[0]  # as the CPU's network gives it
    before = x.clone()
    kept = output_array(tmp_path / "a.png", x)
    assert torch.equal(x, before)
    consumed = output_array(tmp_path / "a.png", x, consume=True)
    assert np.array_equal(kept, consumed) and kept.dtype == consumed.dtype == np.uint8
    assert not torch.equal(x, before)  # quantised in the tensor's own memory
