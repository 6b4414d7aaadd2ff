"""Regression tests of the hostile run's failures (issue #25), one or more per
numbered item; each failed on the code before its fix."""

import json
import os
import re
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


def _default_sigint():
    # a test run started in the background (no job control) inherits SIGINT ignored, and so
    # would the child: give it the default, as a terminal's Ctrl-C finds it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted(args: list[str], ready, times: int):
    """`clipsr ARGS` in a subprocess, sent `times` Ctrl-Cs 50 ms apart once `ready()`:
    (stdout, stderr, the finished process)."""
    proc = subprocess.Popen([sys.executable, "-m", "clipsr_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ready():
        time.sleep(0.02)
    for _ in range(times):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    return out, err, proc


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
    _, err, proc = _interrupted(["upscale", str(folder), "-o", str(out), "--preset", "tiny", "--caption", "a",
                                 "-b", "1", "--json", str(report)], lambda: len(list(out.glob("*.png"))) >= 3, 3)
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


# --- train ---------------------------------------------------------------------------------------
def _train_args(data: Path, exp: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--dataset", "folder", "--data-root", str(data), "--captions", str(data / "caps.json"),
            "--preset", "tiny", "--scale", "4", "--hr-crop", "32", "--batch-size", "2", "--max-steps", str(steps),
            "--perceptual-weight", "0", "--num-workers", "0", "--val-every", "0", "--sample-every", "0",
            "--checkpoint-every", "2", "--exp-dir", str(exp), "--no-tensorboard", "-q", *extra]


def test_13_an_unreadable_training_image_is_named_before_anything_is_written(tmp_path):
    from test_train import make_folder

    data = make_folder(tmp_path / "data", n=4)
    (data / "bad.png").write_text("not an image")
    caps = json.loads((data / "caps.json").read_text()) | {"bad.png": "a caption"}
    (data / "caps.json").write_text(json.dumps(caps))
    res = runner.invoke(app, _train_args(data, tmp_path / "exp", 2))
    assert res.exit_code == 2 and "bad.png" in res.output and "cannot be read" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "exp").exists()


def test_14_resume_where_there_is_no_experiment_is_an_error_and_touches_nothing(tmp_path):
    from test_train import make_folder

    data, exp = make_folder(tmp_path / "data", n=4), tmp_path / "mine"
    exp.mkdir()
    for name in ("model.safetensors", "best.safetensors"):
        (exp / name).write_bytes(b"the user's own file")
    res = runner.invoke(app, _train_args(data, exp, 2, "--resume"))
    assert res.exit_code == 2 and "nothing to resume" in res.output, res.output
    assert sorted(p.name for p in exp.iterdir()) == ["best.safetensors", "model.safetensors"]
    assert all((exp / n).read_bytes() == b"the user's own file" for n in ("model.safetensors", "best.safetensors"))


def _checkpoints(exp: Path) -> list[str]:
    return sorted(p.name for p in (exp / "checkpoints").iterdir())


def test_15_with_every_checkpoint_unreadable_resume_refuses_to_start_over(tmp_path):
    from test_train import make_folder

    data, exp = make_folder(tmp_path / "data", n=4), tmp_path / "exp"
    assert runner.invoke(app, _train_args(data, exp, 4)).exit_code == 0
    for p in (exp / "checkpoints").iterdir():
        p.write_bytes(p.read_bytes()[:100])  # truncated
    model = (exp / "model.safetensors").read_bytes()
    res = runner.invoke(app, _train_args(data, exp, 6, "--resume"))
    assert res.exit_code == 2 and "none of the 2 checkpoint(s)" in res.output, res.output
    assert (exp / "model.safetensors").read_bytes() == model
    assert _checkpoints(exp) == ["step_00000002.safetensors", "step_00000004.safetensors"]


def test_16_a_checkpoint_corrupted_in_place_is_detected_and_the_previous_one_used(tmp_path):
    from test_train import make_folder

    data, exp = make_folder(tmp_path / "data", n=4), tmp_path / "exp"
    assert runner.invoke(app, _train_args(data, exp, 4, "--keep-checkpoints", "2")).exit_code == 0
    newest = exp / "checkpoints" / "step_00000004.safetensors"
    raw = bytearray(newest.read_bytes())
    raw[-64:] = bytes(255 - b for b in raw[-64:])  # same length, other bytes: the RNG state's tail
    newest.write_bytes(bytes(raw))
    res = runner.invoke(app, _train_args(data, exp, 6, "--resume", "--keep-checkpoints", "2"))
    assert res.exit_code == 0, res.output
    assert "corrupted" in res.output and "renamed *.broken" in res.output
    assert re.search(r"resumed from \S*step_00000002\.safetensors at step 2", (exp / "train.log").read_text())
    # the newest valid checkpoint survives the rotation; the broken one is kept aside, out of it
    assert _checkpoints(exp) == ["step_00000004.safetensors", "step_00000004.safetensors.broken",
                                 "step_00000006.safetensors"]


def test_17_ctrl_c_in_training_says_where_it_stopped_and_how_to_resume(tmp_path):
    from test_train import make_folder

    data, exp = make_folder(tmp_path / "data", n=4), tmp_path / "exp"
    args = _train_args(data, exp, 100000)
    args.remove("-q")
    out, err, proc = _interrupted(args, lambda: bool(list((exp / "checkpoints").glob("step_*.safetensors"))), 2)
    assert proc.returncode == 130, err
    said = " ".join((out + err).split())
    assert "interrupted at step" in said and "--resume" in said and "Traceback" not in said, said
    log = (exp / "train.log").read_text()
    assert "interrupted at step" in log and "step_0000" in log


# --- weights -------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["model_config a string of a list", "base_channels a string",
                                    "a tensor of the wrong shape"])
def test_18_a_checkpoint_with_bad_metadata_or_shapes_is_one_line_naming_the_file(tmp_path, tiny_cfg, tiny_clip,
                                                                                 damage):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from clipsr_cli.model.checkpoint import save_generator
    from clipsr_cli.model.generator import Generator

    path = tmp_path / "model.safetensors"
    save_generator(path, Generator(tiny_cfg, tiny_clip, 4))
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    if damage.startswith("model_config"):
        meta["model_config"] = json.dumps("[1, 2]")
    elif damage.startswith("base_channels"):
        config = json.loads(meta["model_config"])
        config["generator"]["base_channels"] = "abc"
        meta["model_config"] = json.dumps(config)
    else:
        key = next(k for k in tensors if k.endswith("to_rgb.weight"))
        tensors[key] = tensors[key][:, :2].contiguous()
    save_file(tensors, str(path), metadata=meta)
    _images(tmp_path / "lr", n=1)
    res = runner.invoke(app, ["upscale", str(tmp_path / "lr"), "-o", str(tmp_path / "sr"), "--weights", str(path),
                              "--caption", "a", "-q"])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and str(path) in res.output.replace("\n", ""), res.output
    assert not isinstance(res.exception, (TypeError, RuntimeError))


# --- the questionable ones, as decided -------------------------------------------------------------
def test_a_multi_frame_tiff_is_upscaled_from_its_first_frame_with_a_warning(tmp_path):
    folder = tmp_path / "lr"
    folder.mkdir()
    frames = [Image.new("RGB", (12, 12), c) for c in ("red", "blue", "green")]
    frames[0].save(folder / "stack.tif", save_all=True, append_images=frames[1:])
    res = runner.invoke(app, ["upscale", str(folder), "-o", str(tmp_path / "sr"), *TINY])
    assert res.exit_code == 0 and "holds 3 frames: only the first is upscaled" in " ".join(res.output.split())  # wrapped


def test_an_output_subfolder_that_is_a_symlink_out_of_o_is_refused(tmp_path):
    _images(tmp_path / "lr" / "sub", n=1)
    _images(tmp_path / "lr", n=1)
    outside, out = tmp_path / "outside", tmp_path / "sr"
    outside.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(outside)
    res = runner.invoke(app, ["upscale", str(tmp_path / "lr"), "-r", "-o", str(out), *TINY])
    assert res.exit_code == 1 and "is a symbolic link" in " ".join(res.output.split())
    assert list(outside.iterdir()) == [] and (out / "00.png").is_file()


def test_an_untrained_preset_gives_the_same_outputs_every_run(tmp_path):
    _images(tmp_path / "lr", n=1)
    for name in ("a", "b"):
        assert runner.invoke(app, ["upscale", str(tmp_path / "lr"), "-o", str(tmp_path / name), *TINY]).exit_code == 0
    assert (tmp_path / "a" / "00.png").read_bytes() == (tmp_path / "b" / "00.png").read_bytes()


def test_a_key_given_twice_in_a_json_caption_file_keeps_both_captions(tmp_path):
    from stages.data.captions import read_json

    path = tmp_path / "c.json"
    path.write_text('{"a.png": "one", "b.png": "x", "a.png": ["two", "three"]}')
    assert read_json(path) == {"a.png": ["one", "two", "three"], "b.png": ["x"]}
    for bad in ("[]", '{"a.png": {"nested": "object"}}'):
        path.write_text(bad)
        with pytest.raises(Exception, match="c.json"):
            read_json(path)
