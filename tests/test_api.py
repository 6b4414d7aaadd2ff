"""The Python API, used exactly as the README shows it, and the same outputs as
the command line (one code path)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import clipsr_cli as clipsr
from clipsr_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_api_example_runs_as_written(monkeypatch, capsys):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = text.split("<!-- api-example -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md (API example)", "exec"), {})
    printed = capsys.readouterr().out
    assert "False [0, inf) dB" in printed and "'psnr'" in printed and "clip_score" in printed


@pytest.fixture(scope="module")
def tiny():
    return clipsr.load_model(preset="tiny", scale=4)


def test_each_input_type_comes_back_as_the_same_type(tiny):
    rng = np.random.default_rng(0)
    rgb8 = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    out = tiny.upscale(rgb8, "a")
    assert out.dtype == np.uint8 and out.shape == (40, 48, 3)
    out16 = tiny.upscale((rgb8.astype(np.uint16) * 257), "a")
    assert out16.dtype == np.uint16 and out16.shape == (40, 48, 3)
    outf = tiny.upscale(rgb8 / 255.0, "a")
    assert outf.dtype == np.float64 and outf.shape == (40, 48, 3) and 0 <= outf.min() and outf.max() <= 1
    # the same picture in three types: the same output, to quantisation
    assert np.abs(outf * 255 - out).max() <= 1 and np.abs(out16 / 257.0 - out).max() <= 1
    t = torch.from_numpy(rgb8).permute(2, 0, 1).float() / 255
    assert tiny.upscale(t, "a").shape == (3, 40, 48)
    batch = tiny.upscale(torch.stack([t, t]), ["a", "b"])
    assert batch.shape == (2, 3, 40, 48) and not torch.equal(batch[0], batch[1])  # the caption steers
    gray = tiny.upscale(Image.fromarray(rgb8).convert("L"), "a")
    rgba = tiny.upscale(Image.fromarray(rgb8).convert("RGBA"), "a")
    assert gray.mode == "L" and rgba.mode == "RGBA" and rgba.size == (48, 40)
    with pytest.raises(clipsr_errors().UsageError, match="2 image\\(s\\) but 3 caption"):
        tiny.upscale([rgb8, rgb8], ["a", "b", "c"])


def clipsr_errors():
    import clipsr_cli.errors

    return clipsr_cli.errors


def test_the_api_and_the_cli_write_the_same_pixels(tmp_path):
    lr = tmp_path / "lr"
    lr.mkdir()
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 20, 3), dtype=np.uint8))
    img.save(lr / "a.png")
    res = CliRunner().invoke(app, ["upscale", str(lr), "-o", str(tmp_path / "sr"), "--weights", "clipsr-default-x4",
                                   "--caption", "a cat", "-q"])
    assert res.exit_code == 0, res.output
    api = clipsr.load_model("clipsr-default-x4").upscale(img, "a cat")
    assert np.array_equal(np.asarray(api), np.asarray(Image.open(tmp_path / "sr" / "a.png")))


def test_score_and_metric_metadata_as_pyiqa_exposes_them(tmp_path):
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-8, 9, hr.shape), 0, 255).astype(np.uint8)
    values = clipsr.score(sr, hr, metrics=["psnr", "ssim"], crop_border=4)
    y = lambda a: a.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255 + 16  # noqa: E731
    mse = np.mean((y(sr) - y(hr))[4:-4, 4:-4] ** 2)
    assert values["psnr"] == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-6) and 0 < values["ssim"] < 1
    niqe = clipsr.create_metric("niqe")
    assert niqe.lower_better and not niqe.needs_reference and niqe.range == "[0, inf)"
    for folder, arr in (("sr", sr), ("hr", hr)):
        (tmp_path / folder).mkdir()
        Image.fromarray(arr).save(tmp_path / folder / "x.png")
    result = clipsr.score_folders(tmp_path / "sr", tmp_path / "hr", crop_border=4)
    assert result.rows[0]["psnr"] == pytest.approx(values["psnr"]) and not result.failed
