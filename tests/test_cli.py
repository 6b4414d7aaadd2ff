import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli import app

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _img(path, size=(12, 10), mode="RGB"):
    arr = (np.random.rand(size[1], size[0], 3) * 255).astype(np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def _rgba(path, size=(12, 10)):
    """An image whose alpha channel is not all opaque (WebP drops an opaque one)."""
    arr = (np.random.rand(size[1], size[0], 4) * 255).astype(np.uint8)
    arr[..., 3] = np.linspace(0, 255, size[0], dtype=np.uint8)
    Image.fromarray(arr, "RGBA").save(path, lossless=True)


@pytest.fixture
def folder(tmp_path):
    lr = tmp_path / "lr"
    lr.mkdir()
    _img(lr / "a.png")
    _img(lr / "b.jpg")
    _img(lr / "gray.png", mode="L")
    _img(lr / "alpha.png", mode="RGBA")
    (lr / "empty.png").write_bytes(b"")
    (lr / "notes.png").write_text("not an image")
    return lr


def test_upscale_keeps_going_past_bad_files(folder, tmp_path):
    out = tmp_path / "sr"
    report = tmp_path / "r.json"
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(out), "--caption", "a test",
                              "--scale", "2", "--json", str(report), "-q",
                              "--precision", "fp32"])  # as asked, whatever bf16 units the CPU has
    assert res.exit_code == 1, res.output
    data = json.loads(report.read_text())
    failed = {f["input"].rsplit("/", 1)[-1] for f in data["failed"]}
    assert failed == {"empty.png", "notes.png"}
    setup = data["setup"]  # what made these outputs
    assert (setup["preset"], setup["scale"], setup["weights"], setup["device"], setup["precision"]) == \
        ("tiny", 2, None, "cpu", "float32")
    assert Image.open(out / "a.png").size == (24, 20)
    assert Image.open(out / "b.jpg").size == (24, 20)
    assert Image.open(out / "gray.png").mode == "L"
    assert Image.open(out / "alpha.png").mode == "RGBA"
    assert not list(out.glob(".*tmp"))  # no temporary files left behind


def test_several_captions_give_one_output_each_and_missing_caption_policy(folder, tmp_path):
    for bad in ("empty.png", "notes.png", "gray.png", "alpha.png", "b.jpg"):
        (folder / bad).unlink()
    _img(folder / "c.png")
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"a.png": ["a red bird", "a blue bird"]}))
    out = tmp_path / "sr"
    report = tmp_path / "r.json"
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(out), "--captions", str(caps), "-s", "2",
                              "-q", "--json", str(report)])
    assert res.exit_code == 1  # c.png has no caption under the default 'error' policy
    assert sorted(p.name for p in out.iterdir()) == ["a_c0.png", "a_c1.png"]
    done = {Path(d["output"]).name: d["caption"] for d in json.loads(report.read_text())["done"]}
    assert done == {"a_c0.png": "a red bird", "a_c1.png": "a blue bird"}  # which caption made which output
    assert not np.array_equal(np.asarray(Image.open(out / "a_c0.png")), np.asarray(Image.open(out / "a_c1.png")))
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(out), "--captions", str(caps), "-s", "2",
                              "--missing-caption", "empty", "--skip-existing", "-q"])
    assert res.exit_code == 0, res.output
    assert (out / "c.png").exists()


def test_caption_key_outside_the_input_is_rejected(folder, tmp_path):
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"../secret.png": "x"}))
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"), "--captions", str(caps)])
    assert res.exit_code == 2 and "outside the input folder" in res.output


def test_a_caption_file_naming_no_input_is_a_usage_error(folder, tmp_path):
    # keys of other images: every image would fail for want of a caption
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"images/x.png": "x", "images/y.jpg": "y"}))
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"), "--captions", str(caps),
                              "--missing-caption", "empty"])
    assert res.exit_code == 2, res.output
    assert "none of its 2 entries names an input image" in res.output and "'images/x.png'" in res.output
    assert not (tmp_path / "sr").exists()
    caps.write_text(json.dumps({"images/x.png": "x", "b.jpg": "y"}))  # one match: the others fail one by one
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"), "--captions", str(caps),
                              "-s", "2"])
    assert res.exit_code == 1 and (tmp_path / "sr" / "b.jpg").exists(), res.output


def test_no_caption_source_at_all_is_one_usage_error_before_the_model_loads(folder, tmp_path):
    args = ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"), "-s", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output  # was: the model loaded, then one failure per image
    assert "no caption for any of the 6 input(s)" in res.output and "--missing-caption empty" in res.output
    assert "note:" not in res.output and not (tmp_path / "sr").exists()
    res = runner.invoke(app, args + ["--missing-caption", "empty", "-q"])  # a policy that needs no caption
    assert res.exit_code == 1 and (tmp_path / "sr" / "a.png").exists(), res.output  # (the bad files fail)
    (folder / "b.txt").write_text("a bird")  # one sidecar: the others fail one by one, b.jpg is written
    res = runner.invoke(app, args + ["-o", str(tmp_path / "sr2"), "-q"])
    assert res.exit_code == 1 and (tmp_path / "sr2" / "b.jpg").exists(), res.output


def test_a_flat_folder_finds_its_captions_in_a_file_keyed_by_the_dataset_tree(folder, tmp_path):
    # ../shared/data/sr-bench/captions.json has keys such as "Set5/baby.png"; LR copies sit in one folder
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"Set5/a.png": ["x", "y"], "Set5/gray.png": "g", "Set14/gray.png": "h"}))
    report = tmp_path / "r.json"
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"), "--captions",
                              str(caps), "-s", "2", "--json", str(report), "-q"])
    assert res.exit_code == 1, res.output
    assert sorted(p.name for p in (tmp_path / "sr").iterdir()) == ["a_c0.png", "a_c1.png"]
    reasons = {Path(f["input"]).name: f["kind"] for f in json.loads(report.read_text())["failed"]}
    assert reasons["gray.png"] == "no caption"  # two keys have its stem: neither is guessed


def test_upscale_options_from_a_config_file_and_the_command_line_wins(tmp_path):
    lr = tmp_path / "lr"
    lr.mkdir()
    _img(lr / "a.png")
    config = tmp_path / "upscale.toml"
    config.write_text(f'preset = "tiny"\ncaption = "x"\nscale = 2\nsuffix = "_file"\nquiet = true\n'
                      f'output = "{(tmp_path / "sr").as_posix()}"\n')
    res = runner.invoke(app, ["upscale", str(lr), "--config", str(config)])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "sr" / "a_file.png").size == (24, 20)
    assert res.output == ""  # quiet = true: not even the note on untrained weights
    res = runner.invoke(app, ["upscale", str(lr), "--config", str(config), "--suffix", "_cli", "-s", "4"])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "sr" / "a_cli.png").size == (48, 40)
    config.write_text('preset = "tiny"\ntiles = 64\n')
    res = runner.invoke(app, ["upscale", str(lr), "-o", str(tmp_path / "x"), "--config", str(config)])
    assert res.exit_code == 2 and "unknown key(s) tiles" in res.output and "tile_pad" in res.output
    res = runner.invoke(app, ["upscale", str(lr), "-o", str(tmp_path / "x"), "--config", str(tmp_path / "no.toml")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_output_folder_equal_to_input_is_refused_without_suffix(folder):
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(folder), "--caption", "x"])
    assert res.exit_code == 2 and "is the input folder" in res.output


def test_an_output_that_would_replace_an_input_is_refused_and_the_input_kept(tmp_path):
    # recursive input, output folder inside it, reached through a symbolic link:
    # lr/a.jpg -> link/a.png, which is the input lr/sr/a.png
    lr = tmp_path / "lr"
    (lr / "sr").mkdir(parents=True)
    _img(lr / "a.jpg")
    _img(lr / "sr" / "a.png")
    (tmp_path / "link").symlink_to(lr / "sr")
    before = (lr / "sr" / "a.png").read_bytes()
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(lr), "-r", "-o", str(tmp_path / "link"),
                              "--ext", "png", "--caption", "x", "-s", "2"])
    assert res.exit_code == 1, res.output
    assert "a.jpg: output would overwrite an input" in res.output
    assert (lr / "sr" / "a.png").read_bytes() == before
    assert Image.open(lr / "sr" / "sr" / "a.png").size == (24, 20)  # the other input was upscaled


def test_running_again_with_the_output_inside_the_input_does_not_upscale_the_outputs(tmp_path):
    # -o lr/sr with -r: the second run lists lr/sr/a.png among its inputs; it is
    # a.png's own earlier output, so it is overwritten, not upscaled to lr/sr/sr
    lr = tmp_path / "lr"
    (lr / "sub").mkdir(parents=True)
    _img(lr / "a.png")
    _img(lr / "sub" / "b.jpg")
    args = ["upscale", "--preset", "tiny", str(lr), "-r", "-o", str(lr / "sr"), "--caption", "x", "-s", "2"]
    assert runner.invoke(app, args + ["-q"]).exit_code == 0
    report = tmp_path / "r.json"
    res = runner.invoke(app, args + ["--json", str(report)])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert sorted(Path(d["output"]).name for d in data["done"]) == ["a.png", "b.jpg"]
    assert {Path(s["input"]).name: s["reason"] for s in data["skipped"]} == {
        "a.png": f"an earlier output of {lr / 'a.png'}, not upscaled again",
        "b.jpg": f"an earlier output of {lr / 'sub' / 'b.jpg'}, not upscaled again"}
    assert not (lr / "sr" / "sr").exists()
    assert Image.open(lr / "sr" / "a.png").size == (24, 20)
    for k in range(2):  # a shard knows them too, though their inputs may be in the other shard
        assert runner.invoke(app, args + ["--shard", f"{k}/2", "-q"]).exit_code == 0
    assert not (lr / "sr" / "sr").exists()


def test_running_again_in_place_with_a_suffix_skips_its_own_outputs(tmp_path):
    lr = tmp_path / "lr"
    lr.mkdir()
    _img(lr / "a.png")
    _img(lr / "a_x2.jpg")  # the user's own image in the way of nothing: upscaled
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"a.png": ["x", "y"], "b.png": "z", "a_x2.jpg": "w"}))
    args = ["upscale", "--preset", "tiny", str(lr), "-o", str(lr), "--suffix", "_x2", "--captions", str(caps),
            "-s", "2", "--skip-existing", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    first = ["a.png", "a_x2.jpg", "a_x2_c0.png", "a_x2_c1.png", "a_x2_x2.jpg"]
    assert sorted(p.name for p in lr.iterdir()) == first
    written = {name: (lr / name).stat().st_mtime_ns for name in first}
    _img(lr / "b.png")  # added since
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output  # a.png: outputs exist; a_x2_c0.png, a_x2_c1.png: a.png's outputs
    assert sorted(p.name for p in lr.iterdir()) == sorted(first + ["b.png", "b_x2.png"])
    assert all((lr / name).stat().st_mtime_ns == t for name, t in written.items())


def test_an_output_too_large_for_free_memory_is_refused_and_the_run_goes_on(monkeypatch, tmp_path):
    from clipsr_cli.pipeline import tiling

    lr = tmp_path / "lr"
    lr.mkdir()
    _img(lr / "big.png", size=(40, 40))
    _img(lr / "small.png", size=(12, 10))
    need = {name: tiling.output_host_bytes(h * 2, w * 2, False, 8) for name, (h, w) in
            (("big", (40, 40)), ("small", (10, 12)))}
    monkeypatch.setattr(tiling, "HOST_CHECK_FROM_BYTES", 0)
    monkeypatch.setattr(tiling, "host_available_memory", lambda: (need["big"] + need["small"]) // 2)
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(lr), "-o", str(tmp_path / "sr"), "--caption", "x",
                              "-s", "2"])
    assert res.exit_code == 1, res.output
    assert "big.png: its 80x80 output needs about" in res.output and "smaller --scale" in res.output
    assert sorted(p.name for p in (tmp_path / "sr").iterdir()) == ["small.png"]


def test_two_inputs_with_one_output_name_write_it_once(tmp_path):
    # a.png and a.jpg both become a.png under --ext png: the first in input order
    # keeps the name, the other is reported and its would-be output never written
    lr = tmp_path / "lr"
    lr.mkdir()
    _img(lr / "a.jpg", size=(12, 10))
    _img(lr / "a.png", size=(14, 10))
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(lr), "-o", str(tmp_path / "sr"), "--ext", "png",
                              "--caption", "x", "-s", "2"])
    assert res.exit_code == 1, res.output
    assert "a.png: its output a.png is also the output of" in res.output and "a.jpg" in res.output
    assert Image.open(tmp_path / "sr" / "a.png").size == (24, 20)  # a.jpg's, not overwritten by a.png's


def test_where_names_ignore_case_outputs_differing_in_case_are_one(monkeypatch, tmp_path):
    from clipsr_cli.pipeline import plan

    lr = tmp_path / "lr"
    lr.mkdir()
    _img(lr / "A.PNG", size=(12, 10))  # its output keeps the stem: A.png
    _img(lr / "a.jpg", size=(14, 10))
    args = ["upscale", "--preset", "tiny", str(lr), "-o", str(tmp_path / "sr"), "--ext", "png", "--caption", "x",
            "-s", "2", "-q"]
    assert runner.invoke(app, args).exit_code == 0  # Linux: A.png and a.png are two files
    assert sorted(p.name for p in (tmp_path / "sr").iterdir()) == ["A.png", "a.png"]
    monkeypatch.setattr(plan, "CASE_INSENSITIVE_NAMES", True)  # macOS, Windows
    res = runner.invoke(app, args[:5] + [str(tmp_path / "sr2")] + args[6:])
    assert res.exit_code == 1 and "its output a.png is also the output of" in res.output, res.output


def test_an_alpha_image_whose_png_output_is_taken_is_reported(tmp_path):
    # an RGBA WebP is written as PNG by default: its name then clashes with a.png's
    # output, or with an input (x.webp -> x_s.png beside an input x_s.png)
    lr = tmp_path / "lr"
    lr.mkdir()
    _img(lr / "a.png", size=(12, 10))
    _rgba(lr / "a.webp", size=(14, 10))
    _rgba(lr / "x.webp", size=(14, 10))
    _img(lr / "x_s.png", size=(16, 10))
    before = (lr / "x_s.png").read_bytes()
    report = tmp_path / "r.json"
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(lr), "-o", str(lr), "--suffix", "_s",
                              "--caption", "x", "-s", "2", "--json", str(report)])
    assert res.exit_code == 1, res.output
    failed = {Path(f["input"]).name: f["reason"] for f in json.loads(report.read_text())["failed"]}
    assert failed.keys() == {"a.webp", "x.webp"}, failed
    assert "also the output of" in failed["a.webp"] and "a.png" in failed["a.webp"]
    assert "overwrite an input" in failed["x.webp"]
    assert (lr / "x_s.png").read_bytes() == before
    assert Image.open(lr / "a_s.png").size == (24, 20)  # a.png's
    assert Image.open(lr / "x_s_s.png").size == (32, 20)


def test_ext_jpg_flattens_transparency_over_white_and_says_so_once(tmp_path):
    lr = tmp_path / "lr"
    lr.mkdir()
    for name in ("a.png", "b.png"):
        arr = np.zeros((10, 12, 4), np.uint8)
        arr[..., 0] = 255  # red, transparent but for a central square
        arr[3:7, 4:8, 3] = 255
        Image.fromarray(arr, "RGBA").save(lr / name)
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(lr), "-o", str(tmp_path / "sr"), "--caption", "x",
                              "-s", "2", "--ext", "jpg"])
    assert res.exit_code == 0, res.output
    assert res.output.count("has transparency") == 1 and "composited over white" in res.output
    out = np.asarray(Image.open(tmp_path / "sr" / "a.jpg"), dtype=int)
    assert out.shape == (20, 24, 3) and (out[0, 0] > 240).all()  # transparent corner: white, not red
    assert out[10, 12, 0] > 200 and out[10, 12, 1:].max() < 60  # opaque centre: red


@pytest.mark.parametrize("tile", ["0", "8"])
def test_outscale_gives_any_output_size_for_every_kind_of_image(folder, tmp_path, tile):
    for bad in ("empty.png", "notes.png"):
        (folder / bad).unlink()
    _img(folder / "c.png")  # the same size as a.png: a batch of two
    out = tmp_path / "sr"
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(out), "--caption", "x",
                              "--outscale", "2.5", "--tile", tile])  # x4 network, 12x10 inputs
    assert res.exit_code == 0 and "x4 resized to x2.5" in res.output, res.output
    for name, mode in (("a.png", "RGB"), ("c.png", "RGB"), ("b.jpg", "RGB"), ("gray.png", "L"),
                       ("alpha.png", "RGBA")):
        with Image.open(out / name) as im:
            assert im.size == (30, 25) and im.mode == mode, (name, im.size, im.mode)


def test_weights_by_model_name_or_file(folder, tmp_path):
    from weights import BUNDLED_DIR

    (folder / "empty.png").unlink()
    (folder / "notes.png").unlink()
    out = tmp_path / "sr"
    res = runner.invoke(app, ["upscale", str(folder / "a.png"), "-o", str(out), "--caption", "x",
                              "--weights", "clipsr-default-x8", "-q"])  # a name from `clipsr weights list`
    assert res.exit_code == 0, res.output
    assert Image.open(out / "a.png").size == (96, 80)
    res = runner.invoke(app, ["upscale", str(folder / "a.png"), "-o", str(out), "--caption", "x", "--weights",
                              str(BUNDLED_DIR / "clipsr-default-x8.safetensors"), "--suffix", "_f", "-q"])
    assert res.exit_code == 0 and Image.open(out / "a_f.png").size == (96, 80), res.output
    res = runner.invoke(app, ["upscale", str(folder), "-o", str(out), "--caption", "x", "--weights", "clipsr-x3"])
    assert res.exit_code == 2 and ("nor a model name (models: clipsr-default-real-denoise-x4, "
                                   "clipsr-default-real-denoise-x8, clipsr-default-real-x4, clipsr-default-real-x8, "
                                   "clipsr-default-x4, clipsr-default-x8, clipsr-demo-x8)") in res.output


def test_outscale_and_scale_usage_errors(folder, tmp_path):
    args = ["upscale", str(folder), "-o", str(tmp_path / "sr"), "--caption", "x"]
    res = runner.invoke(app, args + ["--preset", "tiny", "--outscale", "0"])
    assert res.exit_code == 2 and "--outscale 0.0: must be > 0" in res.output, res.output
    for bad in ("inf", "nan", "1e300"):  # refused before the model loads, not an OverflowError after it
        res = runner.invoke(app, args + ["--preset", "tiny", "--outscale", bad])
        assert res.exit_code == 2 and "must be > 0 and at most 64" in res.output, (bad, res.output)
    res = runner.invoke(app, args + ["-s", "2"])  # no bundled x2 model: the way to an x2 output is named
    assert res.exit_code == 2 and "drop --scale and give --outscale 2" in res.output, res.output
    res = runner.invoke(app, args + ["--preset", "tiny", "--tile-pad", "-1"])
    assert res.exit_code == 2 and "--tile-pad -1: must be >= 0" in res.output, res.output
    res = runner.invoke(app, args + ["--preset", "tiny", "--fp32", "--precision", "bf16"])
    assert res.exit_code == 2 and "--fp32 and --precision bf16 disagree" in res.output, res.output
    res = runner.invoke(app, args + ["--preset", "tiny", "--fp32", "-s", "2"])  # Real-ESRGAN's flag
    assert res.exit_code == 1 and "float32" in res.output, res.output  # empty.png and notes.png fail


def test_skip_existing_finds_the_png_output_of_an_alpha_image(tmp_path):
    lr, out = tmp_path / "lr", tmp_path / "sr"
    lr.mkdir()
    _rgba(lr / "a.webp")
    args = ["upscale", "--preset", "tiny", str(lr), "-o", str(out), "--caption", "x", "-s", "2", "--skip-existing"]
    assert runner.invoke(app, args).exit_code == 0
    written = (out / "a.png").stat().st_mtime_ns
    report = tmp_path / "r.json"
    res = runner.invoke(app, args + ["--json", str(report)])
    assert res.exit_code == 0, res.output
    assert [Path(s["input"]).name for s in json.loads(report.read_text())["skipped"]] == ["a.webp"]
    assert (out / "a.png").stat().st_mtime_ns == written


def test_a_folder_without_images_is_a_usage_error_that_points_at_subfolders(tmp_path):
    (tmp_path / "lr" / "sub").mkdir(parents=True)
    (tmp_path / "lr" / "notes.txt").write_text("x")
    args = ["upscale", "--preset", "tiny", str(tmp_path / "lr"), "-o", str(tmp_path / "sr"), "--caption", "x"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "no images" in res.output and "add -r" not in res.output, res.output
    _img(tmp_path / "lr" / "sub" / "a.png")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "its subfolders hold some: add -r" in res.output, res.output
    assert runner.invoke(app, args + ["-r", "-s", "2"]).exit_code == 0


def test_hidden_files_and_folders_are_not_inputs(tmp_path):
    from clipsr_cli.pipeline.plan import collect_inputs

    lr = tmp_path / "lr"
    (lr / ".thumbnails").mkdir(parents=True)
    (lr / "sub").mkdir()
    _img(lr / "a.png")
    _img(lr / "sub" / "b.png")
    _img(lr / ".thumbnails" / "a.png")
    (lr / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata, not an image")
    (lr / "sub" / "._b.png").write_bytes(b"\x00\x05\x16\x07")
    assert collect_inputs(str(lr), recursive=True)[1] == [lr / "a.png", lr / "sub" / "b.png"]
    assert collect_inputs(str(lr))[1] == [lr / "a.png"]
    assert collect_inputs(str(lr / "._a.png"))[1] == [lr / "._a.png"]  # named: it is an input
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(lr), "-r", "-o", str(tmp_path / "sr"), "--caption", "x",
                              "-s", "2", "-q"])
    assert res.exit_code == 0, res.output


def test_an_output_folder_that_cannot_be_made_is_one_error_up_front(folder, tmp_path):
    (tmp_path / "notes.txt").write_text("a file where a folder would go")
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "notes.txt" / "sr"),
                              "--caption", "x"])
    assert res.exit_code == 2 and "cannot write there" in res.output and "failed:" not in res.output, res.output
    (folder / "empty.png").unlink()
    (folder / "notes.png").unlink()
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "new" / "sr"),
                              "--caption", "x", "-s", "2", "-q"])
    assert res.exit_code == 0, res.output  # made, and the probe gone
    assert sorted(p.name for p in (tmp_path / "new" / "sr").iterdir()) == ["a.png", "alpha.png", "b.jpg", "gray.png"]


def test_an_output_path_that_is_a_file_is_refused_before_any_work(folder, tmp_path):
    (tmp_path / "sr").write_text("not a folder")
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"), "--caption", "x"])
    assert res.exit_code == 2 and "a file, not a folder" in res.output, res.output
    assert (tmp_path / "sr").read_text() == "not a folder"


@pytest.mark.parametrize("suffix", ["/../../evil", "_x4\\..", "C:x"])
def test_a_suffix_holding_a_path_is_a_usage_error(folder, tmp_path, suffix):
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"), "--caption", "x",
                              "--suffix", suffix])
    assert res.exit_code == 2 and "no '/'" in res.output, res.output
    assert not (tmp_path / "sr").exists()


def test_an_unknown_missing_caption_policy_names_the_choices(folder, tmp_path):
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"),
                              "--missing-caption", "skip"])
    assert res.exit_code == 2 and "--missing-caption skip: choose error | empty | default" in res.output, res.output


def test_scale_must_match_checkpoint(tiny_cfg, tiny_clip, folder, tmp_path):
    from clipsr_cli.model.checkpoint import save_generator
    from clipsr_cli.model.generator import Generator

    ckpt = tmp_path / "g.safetensors"
    save_generator(ckpt, Generator(tiny_cfg, tiny_clip, 4))
    res = runner.invoke(app, ["upscale", str(folder / "a.png"), "-o", str(tmp_path / "sr"),
                              "--caption", "x", "--weights", str(ckpt), "--scale", "8"])
    assert res.exit_code == 2 and "x4 model" in res.output
    res = runner.invoke(app, ["upscale", str(folder / "a.png"), "-o", str(tmp_path / "sr"),
                              "--caption", "x", "--weights", str(ckpt), "-q"])
    assert res.exit_code == 0 and Image.open(tmp_path / "sr" / "a.png").size == (48, 40)


def test_info_and_plugins_work_offline():
    res = runner.invoke(app, ["info", "--preset", "paper", "-s", "4"])
    assert res.exit_code == 0, res.output
    assert "x4" in res.output and "151.28 M" in res.output  # frozen ViT-B/32 towers
    res = runner.invoke(app, ["plugins"])
    assert res.exit_code == 0 and "pixelshuffle" in res.output and "clipsr 0.1.0" in res.output
    res = runner.invoke(app, ["info", "--preset", "nope"])
    assert res.exit_code == 2 and "available: demo, paper, small, tiny" in res.output


def test_caption_formats_agree(tmp_path):
    from clipsr_cli.io.captions import read_caption_file

    (tmp_path / "c.json").write_text(json.dumps({"x/a.png": ["one", "two"], "b.png": "three"}))
    (tmp_path / "c.jsonl").write_text('{"image": "x/a.png", "captions": ["one", "two"]}\n'
                                      '{"image": "b.png", "caption": "three"}\n')
    (tmp_path / "c.csv").write_text("image,caption\nx/a.png,one\nx/a.png,two\nb.png,three\n")
    tables = [read_caption_file(tmp_path / f"c.{ext}") for ext in ("json", "jsonl", "csv")]
    assert tables[0] == tables[1] == tables[2] == {"x/a.png": ["one", "two"], "b.png": ["three"]}


def test_a_jsonl_image_that_is_not_a_path_is_one_line_naming_file_and_line(folder, tmp_path):
    for n, bad in enumerate(("3", "[\"a.png\"]", "{\"x\": 1}")):
        caps = tmp_path / f"c{n}.jsonl"
        caps.write_text('{"image": "a.png", "caption": "ok"}\n' + f'{{"image": {bad}, "caption": "a bird"}}\n')
        res = runner.invoke(app, ["upscale", str(folder), "--captions", str(caps), "-o", str(tmp_path / "sr"),
                                  "--preset", "tiny"])
        assert res.exit_code == 2, res.output
        assert f"{caps}:2: \"image\" must be a path string" in res.output and "Traceback" not in res.output


def test_caption_files_with_a_byte_order_mark_are_read_and_other_encodings_named(folder, tmp_path):
    # Excel's "CSV UTF-8" and Notepad start UTF-8 files with a byte-order mark
    bom = "\ufeff"
    (tmp_path / "c.csv").write_text(bom + "image,caption\r\na.png,\"a bird, red\"\r\n", encoding="utf-8")
    (tmp_path / "c.json").write_text(bom + json.dumps({"a.png": "a bird"}), encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(bom + json.dumps({"image": "a.png", "caption": "a bird"}) + "\n", encoding="utf-8")
    for name in ("c.csv", "c.json", "c.jsonl"):
        res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder / "a.png"), "-o", str(tmp_path / f"sr-{name}"),
                                  "--captions", str(tmp_path / name), "-s", "2", "-q"])
        assert res.exit_code == 0, (name, res.output)
    (tmp_path / "latin.csv").write_bytes("image,caption\na.png,caf\u00e9\n".encode("latin-1"))
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder / "a.png"), "-o", str(tmp_path / "sr"),
                              "--captions", str(tmp_path / "latin.csv")])
    assert res.exit_code == 2 and "latin.csv: not UTF-8 text" in res.output and "save it as UTF-8" in res.output


def test_a_sidecar_that_is_not_utf8_fails_its_image_alone(folder, tmp_path):
    (folder / "a.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (folder / "b.txt").write_text("\ufeffa bird", encoding="utf-8")
    report = tmp_path / "r.json"
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"), "-s", "2",
                              "--json", str(report)])
    assert res.exit_code == 1, res.output
    failed = {Path(f["input"]).name: f["reason"] for f in json.loads(report.read_text())["failed"]}
    assert "a.txt: not UTF-8 text" in failed["a.png"]
    assert (tmp_path / "sr" / "b.jpg").exists()  # its sidecar, with a byte-order mark, was read


def _summary_rows(output: str) -> dict[str, tuple[str, str]]:
    """The upscale summary table's rows: first cell -> (count, why)."""
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]
    return {r[0]: (r[1], r[2]) for r in rows if len(r) == 3}


def test_the_summary_says_why_inputs_were_skipped_or_failed(folder, tmp_path):
    caps = tmp_path / "c.json"  # b.jpg and alpha.png have no caption
    caps.write_text(json.dumps({"a.png": "a bird", "gray.png": "a gray bird", "empty.png": "x", "notes.png": "x"}))
    args = ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"), "--captions", str(caps), "-s", "2"]
    res = runner.invoke(app, args + ["--missing-caption", "default", "--default-caption", "a small photo"])
    assert res.exit_code == 1, res.output
    rows = _summary_rows(res.output)
    assert rows["outputs written"] == ("4", "")
    assert rows["inputs skipped"] == ("0", "")
    assert rows["inputs failed"] == ("2", "not a readable image (2)")
    assert rows["missing captions"] == ("2", "upscaled with 'a small photo'")  # counted, though captioned

    report = tmp_path / "r.json"
    res = runner.invoke(app, args + ["--skip-existing", "--json", str(report)])
    assert res.exit_code == 1, res.output
    rows = _summary_rows(res.output)
    assert rows["outputs written"] == ("0", "")
    assert rows["inputs skipped"] == ("2", "output exists (2)")
    assert rows["inputs failed"] == ("4", "no caption (2), not a readable image (2)")
    assert rows["missing captions"] == ("2", "failed (--missing-caption error)")
    data = json.loads(report.read_text())
    assert {Path(f["input"]).name: f["kind"] for f in data["failed"]} == {
        "alpha.png": "no caption", "b.jpg": "no caption", "empty.png": "not a readable image",
        "notes.png": "not a readable image"}
    assert data["missing_captions"] == 2


def test_an_empty_caption_list_counts_as_a_missing_caption(folder, tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"a.png": [], "b.jpg": ""}))
    report = tmp_path / "r.json"
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder / "a.png"), "-o", str(tmp_path / "sr"),
                              "--captions", str(tmp_path / "c.json"), "-s", "2", "--json", str(report)])
    assert res.exit_code == 1, res.output  # it was neither written nor reported
    data = json.loads(report.read_text())
    assert data["missing_captions"] == 1 and "no caption" in data["failed"][0]["reason"]
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder / "b.jpg"), "-o", str(tmp_path / "sr"),
                              "--captions", str(tmp_path / "c.json"), "-s", "2", "-q"])
    assert res.exit_code == 0 and (tmp_path / "sr" / "b.jpg").exists()  # an empty string is a caption: no text


def test_shared_caption_file_shape_is_accepted(shared_dir):
    from clipsr_cli.io.captions import read_caption_file

    table = read_caption_file(shared_dir / "data" / "sr-bench" / "captions.json")
    assert table and all(isinstance(v, list) and v for v in table.values())


def test_shards_partition_the_inputs_exactly(tmp_path):
    from clipsr_cli.errors import UsageError
    from clipsr_cli.pipeline.plan import parse_shard, shard

    root = tmp_path
    images = [root / f"d{i % 3}" / f"img{i}.png" for i in range(50)]
    parts = [shard(images, root, k, 4) for k in range(4)]
    assert sorted(p for part in parts for p in part) == sorted(images)
    assert sum(len(part) for part in parts) == 50 and all(parts)
    assert shard(list(reversed(images)), root, 1, 4) == list(reversed(parts[1]))  # order-independent
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_shard_option_in_cli(folder, tmp_path):
    for bad in ("empty.png", "notes.png"):
        (folder / bad).unlink()
    outs = []
    for k in range(2):
        out = tmp_path / f"sr{k}"
        res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(out), "--caption", "x", "-s", "2",
                                  "--shard", f"{k}/2", "-q"])
        assert res.exit_code == 0, res.output
        outs += [p.name for p in out.iterdir()] if out.exists() else []
    assert sorted(outs) == ["a.png", "alpha.png", "b.jpg", "gray.png"]


def test_torchrun_ranks_take_their_shard_without_the_option(folder, tmp_path):
    import torch

    from clipsr_cli.train.distributed import Dist, rank_device

    for bad in ("empty.png", "notes.png"):
        (folder / bad).unlink()
    outs = []
    for rank in range(2):  # what torchrun --nproc-per-node 2 sets for each process
        out = tmp_path / f"sr{rank}"
        env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(out), "--caption", "x",
                                  "-s", "2"], env=env)
        assert res.exit_code == 0 and f"(shard {rank}/2)" in res.output, res.output
        outs.append(sorted(p.name for p in out.iterdir()) if out.exists() else [])
    assert sorted(outs[0] + outs[1]) == ["a.png", "alpha.png", "b.jpg", "gray.png"] and all(outs)
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "all"), "--caption", "x",
                              "-s", "2", "--shard", "0/1", "-q"], env={"RANK": "1", "WORLD_SIZE": "2"})
    assert res.exit_code == 0 and len(list((tmp_path / "all").iterdir())) == 4  # --shard given: it decides
    # each process on its own GPU, unless the device names one
    assert rank_device(torch.device("cuda"), Dist(3, 4, 1)) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda", 0), Dist(3, 4, 1)) == torch.device("cuda", 0)
    assert rank_device(torch.device("cuda"), Dist()) == torch.device("cuda")
    assert rank_device(torch.device("cpu"), Dist(3, 4, 1)) == torch.device("cpu")


def _upscale_in_a_process_until_its_first_output(tmp_path, n: int, size: tuple[int, int], *extra: str):
    """(command, output folder, process): `clipsr upscale` of n images at x8 in a
    child process, returned once its first output exists (or it ended)."""
    import subprocess
    import sys
    import time

    lr = tmp_path / "lr"
    lr.mkdir()
    for i in range(n):
        _img(lr / f"im{i:02d}.png", size=size)
    out = tmp_path / "sr"
    cmd = [sys.executable, "-m", "clipsr_cli", "upscale", "--preset", "tiny", str(lr), "-o", str(out), "--caption", "x",
           "-s", "8", "-q", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not list(out.glob("*.png")):
        time.sleep(0.02)
    return cmd, out, proc


def test_killed_run_resumes_with_skip_existing_and_leaves_no_corrupt_file(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from clipsr_cli.io.files import STALE_AFTER_S

    cmd, out, proc = _upscale_in_a_process_until_its_first_output(tmp_path, 8, (96, 80))
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()
    for p in out.glob("*.png"):  # whatever exists is a whole image
        Image.open(p).load()
    # a SIGKILL mid-write can leave a hidden temporary: never taken for an output, and
    # removed by a later run once it is old enough that no live writer can own it
    out.mkdir(exist_ok=True)
    (out / ".im03.png.0123456789abcdef.tmp").write_bytes(b"half an image")  # as if it were one
    long_ago = time.time() - STALE_AFTER_S - 1
    for p in out.iterdir():
        if p.name.startswith("."):
            os.utime(p, (long_ago, long_ago))
    res = subprocess.run(cmd + ["--skip-existing"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.glob("*.png")) == [f"im{i:02d}.png" for i in range(8)]
    for p in out.glob("*.png"):
        assert Image.open(p).size == (768, 640)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_ctrl_c_stops_the_run_says_how_to_resume_and_leaves_whole_files(tmp_path):
    import signal
    import subprocess

    report = tmp_path / "r.json"
    cmd, out, proc = _upscale_in_a_process_until_its_first_output(tmp_path, 48, (64, 48), "--batch-size", "1",
                                                                  "--json", str(report))
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert "interrupted after" in err and "--skip-existing" in err, err
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < 48
    for p in written:
        assert Image.open(p).size == (512, 384)
    data = json.loads(report.read_text())  # what was done before the interruption, said to be partial
    assert data["interrupted"] is True and all(Path(d["output"]) in written for d in data["done"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries: running writes finished
    res = subprocess.run(cmd + ["--skip-existing"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert len(list(out.glob("*.png"))) == 48


def test_a_cuda_index_beyond_the_machines_devices_is_a_usage_error(monkeypatch, folder, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder), "-o", str(tmp_path / "sr"), "--caption", "x",
                              "--device", "cuda:2"])
    assert res.exit_code == 2 and "has 2 CUDA device(s), cuda:0 to cuda:1" in res.output, res.output


@pytest.mark.parametrize("amx, avx512_bf16, speedup, want, why", [
    (False, False, None, "float32", "neither AMX nor AVX512-BF16"),
    (True, True, 5.9, "bfloat16", "AMX and AVX512-BF16 ran a bf16 product 5.9x faster"),
    (False, True, 1.1, "float32", "only 1.1x"),
])
def test_unset_precision_on_a_cpu_follows_its_bf16_units(monkeypatch, amx, avx512_bf16, speedup, want, why):
    import torch

    from clipsr_cli.pipeline import devices

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(devices, "bf16_speedup", lambda: speedup)  # None: must not be measured
    devices._cpu_precision.cache_clear()
    try:
        dtype, said = devices.choose_precision(None, torch.device("cpu"))
    finally:
        devices._cpu_precision.cache_clear()
    assert str(dtype) == f"torch.{want}" and why in said
    assert devices.choose_precision("fp32", torch.device("cpu")) == (torch.float32, "--precision fp32")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        devices.pick_precision("fp16", torch.device("cpu"))


def test_bf16_on_the_cpu_casts_the_weights_once_and_stays_within_45_db(tmp_path):
    """A bundled model in bf16 against fp32 on crops of the examples: weights
    in bf16 (no cast per call), the image and its global residual in fp32."""
    import numpy as np
    import torch
    from PIL import Image

    from clipsr_cli.api import load_model

    fp32, bf16 = (load_model("clipsr-default-x4", device="cpu", precision=p) for p in ("fp32", "bf16"))
    assert {p.dtype for p in bf16.upscaler.gen.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32.upscaler.gen.parameters()} == {torch.float32}
    for name, caption in (("coffee.png", "a cup of coffee on a saucer"), ("rocket.jpg", "a rocket on its pad")):
        lr = Image.open(EXAMPLES / name).convert("RGB").crop((40, 40, 88, 88))
        a, b = (np.asarray(m.upscale(lr, caption), dtype=np.float64) for m in (fp32, bf16))
        mse = np.mean((a - b) ** 2)
        assert 0 < mse and 10 * np.log10(255**2 / mse) >= 45  # bf16 really ran, and stays close


def test_fp16_on_cpu_is_a_usage_error(folder, tmp_path):
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder / "a.png"), "-o", str(tmp_path / "o"), "--caption", "x",
                              "--device", "cpu", "--precision", "fp16"])
    assert res.exit_code == 2 and "fp16 needs a GPU" in res.output


def test_upscale_without_weights_uses_the_bundled_default_once(tmp_path):
    """The default is the real model of the scale, said once and recorded in the report
    (the outputs against --real and the clean model: test_degradations.py)."""
    from clipsr_cli.model.bundled import DEFAULT_MODELS, DENOISE_MODELS
    from clipsr_cli.model.weights import get_entry, resolve

    for name in (*DEFAULT_MODELS.values(), *DENOISE_MODELS.values()):  # shipped, verified against the manifest
        assert resolve(name).name == get_entry(name).filename
    folder = tmp_path / "lr"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (12, 10), (200, 30, 30)).save(folder / name)
    res = runner.invoke(app, ["upscale", str(folder), "-o", str(tmp_path / "sr"), "--caption", "a red square",
                              "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert said.count("bundled default clipsr-default-real-x4") == 1 and said.count("note:") == 1, said
    setup = json.loads((tmp_path / "r.json").read_text())["setup"]
    assert (setup["weights"], setup["denoise_strength"], setup["scale"]) == ("clipsr-default-real-x4", "auto", 4)
    assert Image.open(tmp_path / "sr" / "a.png").size == (48, 40)
    res = runner.invoke(app, ["upscale", str(folder), "-o", str(tmp_path / "sr2"), "--caption", "x", "-s", "2"])
    assert res.exit_code == 2 and "no bundled model for x2" in res.output and "--preset" in res.output


def test_16bit_rgb_png_is_upscaled_to_a_16bit_png(tmp_path):
    from clipsr_cli.io.png import is_png16_color, write_png

    lr = tmp_path / "lr"
    lr.mkdir()
    write_png(lr / "deep.png", (np.random.rand(10, 12, 3) * 65535).astype(np.uint16))
    out = tmp_path / "sr"
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(lr), "-o", str(out), "--caption", "x", "-s", "2", "-q"])
    assert res.exit_code == 0, res.output
    with Image.open(out / "deep.png") as im:
        assert im.size == (24, 20) and is_png16_color(im)


def test_long_caption_is_truncated_with_a_warning_naming_the_image(tiny_cfg, tiny_clip):
    import torch

    from clipsr_cli.model.generator import Generator
    from clipsr_cli.pipeline.upscaler import Upscaler

    warnings = []
    up = Upscaler(Generator(tiny_cfg, tiny_clip, 2).eval(), torch.device("cpu"), warn=warnings.append, tile=0)
    long = " ".join(["a small red bird with a curved beak"] * 12)  # ~96 tokens
    out = up.upscale(torch.rand(3, 8, 8), long, "birds/one.png")
    assert out.shape == (3, 16, 16)
    assert len(warnings) == 1 and "birds/one.png" in warnings[0] and "truncated" in warnings[0]
    encoded = len(up._text)
    up.upscale(torch.rand(3, 8, 8), long, "birds/two.png")  # the same caption: encoded and said once
    up.upscale(torch.rand(3, 8, 8), "a short caption", "birds/three.png")
    assert len(up._text) == encoded + 1 and len(warnings) == 1
    up.upscale(torch.rand(3, 8, 8), long + " on a branch", "birds/four.png")  # another long caption
    assert len(warnings) == 2 and "birds/four.png" in warnings[1]


def test_new_captions_of_a_batch_are_encoded_together_once(tiny_cfg, tiny_clip):
    import torch

    from clipsr_cli.model.generator import Generator
    from clipsr_cli.pipeline.upscaler import Upscaler

    gen = Generator(tiny_cfg, tiny_clip, 2).eval()
    calls = []
    encode = gen.encode_text
    gen.encode_text = lambda caps: calls.append(list(caps)) or encode(caps)
    up = Upscaler(gen, torch.device("cpu"), tile=0)
    batch = ["a red bird", "a small blue bird on a long thin branch", "a red bird"]
    cond = up.conditions(batch)
    assert calls == [["a red bird", "a small blue bird on a long thin branch"]]  # unique, one call
    up.conditions(["a small blue bird on a long thin branch", "a cat"])
    assert calls[1:] == [["a cat"]]  # cached ones are not encoded again
    with torch.no_grad():
        for i, caption in enumerate(batch):  # the same as encoding each caption alone
            alone = encode([caption])
            assert torch.allclose(cond.prompts[i], alone.prompts[0], atol=1e-5)
            assert torch.allclose(cond.sentence[i], alone.sentence[0], atol=1e-5)


def test_help_answers_without_importing_torch():
    # torch and open_clip take seconds to import: --help and usage errors must not wait for them
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from clipsr_cli.cli import app; "
            "results = [CliRunner().invoke(app, args) for args in "
            "(['--help'], ['upscale', '--help'], ['train', '--help'], ['score', '--help'])]; "
            "assert all(r.exit_code == 0 for r in results), [r.output for r in results]; "
            "print(sorted(m for m in ('torch', 'open_clip', 'numpy') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_every_user_facing_error_is_one_line_with_exit_2(capsys):
    import typer

    from clipsr_cli.cli.app import user_errors
    from clipsr_cli.errors import UserError

    for error in _user_error_classes():
        assert issubclass(error, UserError), error  # the CLI catches the base alone

        @user_errors
        def command():
            raise error(f"x.png: {error.__name__}; fix it")

        with pytest.raises(typer.Exit) as exit_info:
            command()
        assert exit_info.value.exit_code == 2
        assert f"x.png: {error.__name__}; fix it" in capsys.readouterr().err


def _user_error_classes():
    from clipsr_cli.errors import CaptionError, UsageError
    from clipsr_cli.model.checkpoint import CheckpointError
    from clipsr_cli.model.config import ConfigError
    from clipsr_cli.model.weights import WeightsError
    from clipsr_cli.plugins.registry import UnknownStage
    from clipsr_cli.train.run import TrainingDiverged
    from clipsr_cli.train.state import StateError
    from stages.data.datasets import DatasetError

    return (CheckpointError, ConfigError, UnknownStage, UsageError, WeightsError, CaptionError, DatasetError,
            StateError, TrainingDiverged)


def test_bundled_demo_model_draws_the_pattern_each_caption_names(tmp_path):
    """examples/editability: the same LR, one output per caption; the HR has
    caption 0's pattern, so that output is much closer to it than the others."""
    from clipsr_cli.train.data import to_tensor
    from stages.metrics.fullref import psnr

    examples = Path(__file__).parents[1] / "examples" / "editability"
    captions = json.loads((examples / "captions.json").read_text())
    out = tmp_path / "sr"
    res = runner.invoke(app, ["upscale", str(examples / "lr"), "--captions", str(examples / "captions.json"),
                              "--weights", "clipsr-demo-x8", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output

    def load(p):
        with Image.open(p) as im:
            return to_tensor(im.convert("RGB"))[None]

    for name, caps in captions.items():
        hr = load(examples / "hr" / name)
        scores = [float(psnr(load(out / f"{Path(name).stem}_c{i}.png"), hr, 8)[0]) for i in range(len(caps))]
        assert scores[0] > max(scores[1:]) + 5.0, (name, scores)


def test_first_line_says_the_precision_and_why(folder, tmp_path):
    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder / "a.png"), "-o", str(tmp_path / "o"),
                              "--caption", "x", "--device", "cpu", "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    assert "device cpu, bfloat16 (--precision bf16)" in " ".join(res.output.split())  # unwrapped
    from clipsr_cli.pipeline.devices import choose_precision

    res = runner.invoke(app, ["upscale", "--preset", "tiny", str(folder / "a.png"), "-o", str(tmp_path / "p"),
                              "--caption", "x", "--device", "cpu"])
    dtype, why = choose_precision(None, torch.device("cpu"))  # this CPU's own answer
    assert f"device cpu, {str(dtype).removeprefix('torch.')} ({why})" in " ".join(res.output.split())
