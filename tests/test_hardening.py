"""Regression tests of the hostile run's failures (issue #25), one or more per
numbered item; each failed on the code before its fix."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli import app

runner = CliRunner()
TINY = ["--preset", "tiny", "--caption", "a", "-q"]


def _images(folder: Path, n: int = 2, size: int = 16, names=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name in names or [f"{i:02d}.png" for i in range(n)]:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


# --- upscale -----------------------------------------------------------------------------------
def test_1_a_legal_name_of_250_bytes_is_upscaled(tmp_path):
    from clipsr_cli.io.files import atomic_write, remove_stale_temporaries

    name = "é" * 123 + ".png"  # 250 bytes in UTF-8: legal, and no room for a 22-byte longer temporary
    assert len(name.encode()) == 250
    _images(tmp_path / "lr", names=[name])
    res = runner.invoke(app, ["upscale", str(tmp_path / "lr"), "-o", str(tmp_path / "sr"), *TINY])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sr" / name).is_file() and not list((tmp_path / "sr").glob(".*"))
    # the temporary a writer killed mid-write leaves for that name is found and removed by the next run
    target, seen = tmp_path / "sr" / name, []

    def killed(tmp):
        seen.append(Path(tmp).name)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, killed)
    stale = target.with_name(seen[0])  # kill -9 leaves it: put it there, an hour old
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600,) * 2)
    assert len(stale.name.encode()) <= 255
    assert remove_stale_temporaries([target]) == [stale]


def test_2_float_and_int32_tiffs_are_scaled_or_refused_never_garbage(tmp_path):
    folder = tmp_path / "lr"
    folder.mkdir()
    ramp = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(ramp, mode="F").save(folder / "float01.tif")
    Image.fromarray((ramp * 255).astype(np.float32), mode="F").save(folder / "float255.tif")
    Image.fromarray((ramp * 4e6).astype(np.int32), mode="I").save(folder / "int32.tif")
    out = tmp_path / "sr"
    res = runner.invoke(app, ["upscale", str(folder), "-o", str(out), "--ext", "png", *TINY])
    assert res.exit_code == 1  # the int32 image is refused with one line
    assert "int32.tif: 32-bit integer image with values 0 to 4e+06" in res.output.replace("\n", "")
    for name in ("float01", "float255"):
        arr = np.asarray(Image.open(out / f"{name}.png"), dtype=np.float64)
        top = 65535 if arr.max() > 255 else 255
        assert 0.35 < arr.mean() / top < 0.65, name  # the ramp's mid-grey, not black (was 0.4% of full scale)
    assert not (out / "int32.png").exists()


def test_4_a_report_path_that_is_an_input_or_an_image_is_refused_before_any_work(tmp_path):
    images = _images(tmp_path / "lr")
    before = images[0].read_bytes()
    res = runner.invoke(app, ["upscale", str(tmp_path / "lr"), "-o", str(tmp_path / "sr"), "--json",
                              str(images[0]), *TINY])
    assert res.exit_code == 2 and "one of the images this run reads" in res.output
    assert images[0].read_bytes() == before and not (tmp_path / "sr").exists()
    other = _images(tmp_path / "elsewhere", names=["keep.png"])[0]
    res = runner.invoke(app, ["upscale", str(tmp_path / "lr"), "-o", str(tmp_path / "sr"), "--json", str(other),
                              *TINY])
    assert res.exit_code == 2 and "an existing image" in res.output
    sr, hr = tmp_path / "lr", tmp_path / "hr"
    _images(hr)
    for option in ("--json", "--csv"):
        res = runner.invoke(app, ["score", str(sr), "--ref", str(hr), option, str(hr / "00.png")])
        assert res.exit_code == 2 and "one of the images this run reads" in res.output, option
    assert images[0].read_bytes() == before


@pytest.mark.parametrize("option", ["upscale --json", "score --json", "score --csv", "score --report"])
def test_5_a_report_path_that_is_a_folder_or_under_a_file_is_one_line_up_front(tmp_path, option):
    command, flag = option.split()
    _images(tmp_path / "lr")
    _images(tmp_path / "hr")
    a_file = tmp_path / "note.txt"
    a_file.write_text("x")
    base = (["upscale", str(tmp_path / "lr"), "-o", str(tmp_path / "sr"), *TINY] if command == "upscale"
            else ["score", str(tmp_path / "lr"), "--ref", str(tmp_path / "hr")])
    bad = [a_file / "r.json"] + ([tmp_path / "hr"] if flag != "--report" else [a_file])
    for path in bad:
        res = runner.invoke(app, [*base, flag, str(path)])
        assert res.exit_code == 2, (path, res.output)
        assert len(res.output.strip().splitlines()) == 1 and str(path) in res.output.replace("\n", "")
        assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "sr").exists()


def test_6_any_number_of_ctrl_c_exits_130_once_and_the_report_is_what_is_on_disk(tmp_path):
    folder, out, report = tmp_path / "lr", tmp_path / "sr", tmp_path / "r.json"
    _images(folder, n=60, size=64)
    proc = subprocess.Popen([sys.executable, "-m", "clipsr_cli", "upscale", str(folder), "-o", str(out),
                             "--preset", "tiny", "--caption", "a", "-b", "1", "--json", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 3:
        time.sleep(0.02)
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.count("interrupted") == 1 and "Traceback" not in err and "terminate called" not in err, err
    assert not list(out.glob(".*.tmp"))
    data = json.loads(report.read_text())
    assert data["interrupted"] is True
    on_disk = sorted(p.name for p in out.glob("*.png"))
    assert sorted(Path(d["output"]).name for d in data["done"]) == on_disk and len(on_disk) < 60


def test_7_identical_pairs_give_strict_json_with_null_and_a_reason(tmp_path):
    _images(tmp_path / "sr")
    _images(tmp_path / "hr")
    report = tmp_path / "r.json"
    res = runner.invoke(app, ["score", str(tmp_path / "sr"), "--ref", str(tmp_path / "hr"), "--json", str(report)])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    row = data["images"][0]
    assert row["psnr"] is None and "identical" in row["undefined"]["psnr"] and row["ssim"] == pytest.approx(1.0)
    assert "identical to their reference" in res.output


def test_8_9_an_image_too_small_for_its_crop_or_ssim_fails_alone(tmp_path):
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    for folder, seed in ((sr, 1), (hr, 2)):
        folder.mkdir()
        rng = np.random.default_rng(seed)
        for name, size in (("big.png", 40), ("tiny.png", 8), ("small.png", 10)):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
    report = tmp_path / "r.json"
    res = runner.invoke(app, ["score", str(sr), "--ref", str(hr), "-s", "4", "--json", str(report)])
    assert res.exit_code == 1
    data = json.loads(report.read_text())
    assert [r["image"] for r in data["images"]] == ["big.png"]
    reasons = {Path(f["image"]).name: f["reason"] for f in data["failed"]}
    assert "leaves nothing" in reasons["tiny.png"] and "SSIM needs at least 11x11" in reasons["small.png"]
    res = runner.invoke(app, ["score", str(sr), "--ref", str(hr), "-s", "4", "--metrics", "psnr", "--json",
                              str(report)])
    data = json.loads(report.read_text())  # psnr alone: the emptied crop is a failure, not NaN and exit 0
    assert res.exit_code == 1 and "tiny.png" in json.dumps(data["failed"]) and "NaN" not in report.read_text()


def test_11_globs_do_not_follow_symlinked_folders(tmp_path):
    folder = tmp_path / "d"
    _images(folder / "sub", n=1)
    _images(folder, n=1)
    (folder / "self").symlink_to(".")
    (folder / "sub" / "up").symlink_to("..")
    out = tmp_path / "sr"
    res = runner.invoke(app, ["upscale", str(folder) + "/**/*.png", "-r", "-o", str(out), *TINY])
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["00.png", "sub/00.png"]
