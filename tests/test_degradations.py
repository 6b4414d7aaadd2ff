"""The degradation stage (`--degradation`): each operation's statistics, the
parameters as data, reproducibility from (seed, epoch, index), and bicubic
exactly as before (the paper's path)."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from clipsr_cli.model.config import ConfigError
from clipsr_cli.plugins.registry import lookup
from stages.degradations.kernels import KINDS, shaped_kernel, sinc_kernel
from stages.degradations.realistic import add_noise, jpeg, load_params


@pytest.mark.parametrize("kind", KINDS)
def test_each_kernel_sums_to_1_with_the_asked_odd_shape(kind):
    k = shaped_kernel(kind, 13, 2.0, 0.7, 0.5, 1.5)
    assert k.shape == (13, 13) and k.sum() == pytest.approx(1.0) and (k >= 0).all()
    assert k[6, 6] == k.max()  # peaked at the centre
    if kind.endswith("iso") and not kind.endswith("aniso"):
        assert np.allclose(k, k.T) and np.allclose(k, k[::-1])  # isotropic: every symmetry


def test_kernels_match_their_formulas():
    # a Gaussian of sigma s: neighbours at distance 1 in the ratio exp(-1 / (2 s^2))
    k = shaped_kernel("iso", 21, 1.5, 0, 0, 1)
    assert k[10, 11] / k[10, 10] == pytest.approx(math.exp(-1 / (2 * 1.5**2)))
    # the generalised Gaussian with beta = 1 is the Gaussian; an anisotropic one rotated by pi/2 is transposed
    assert np.allclose(shaped_kernel("generalized_aniso", 15, 2.5, 1.0, 0.3, 1.0), shaped_kernel("aniso", 15, 2.5, 1.0, 0.3, 1))
    assert np.allclose(shaped_kernel("aniso", 15, 2.5, 1.0, 0.0, 1), shaped_kernel("aniso", 15, 2.5, 1.0, math.pi / 2, 1).T)
    s = sinc_kernel(21, math.pi / 2)
    assert s.shape == (21, 21) and s.sum() == pytest.approx(1.0) and (s < 0).any()  # the ringing lobes


def test_gaussian_noise_has_the_asked_level_and_gray_noise_is_gray():
    img = torch.full((3, 128, 128), 0.5)
    p = {"gaussian_noise_prob": 1.0, "noise_range": [10.0, 10.0], "gray_noise_prob": 0.0, "poisson_scale_range": [1, 1]}
    noisy = add_noise(img, np.random.default_rng(0), p)
    assert float((noisy - img).std()) == pytest.approx(10 / 255, rel=0.05)
    gray = add_noise(img, np.random.default_rng(0), p | {"gray_noise_prob": 1.0})
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    poisson = add_noise(img, np.random.default_rng(0), p | {"gaussian_noise_prob": 0.0})
    # shot noise of 8-bit counts: variance = mean count, in [0, 1] units sqrt(0.5 * 255) / 255
    assert float((poisson - img).std()) == pytest.approx(math.sqrt(0.5 * 255) / 255, rel=0.05)


def test_the_jpeg_quality_asked_is_the_one_applied():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.random((3, 64, 64), dtype=np.float32))
    buf = io.BytesIO()
    Image.fromarray((img * 255).round().byte().permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=40)
    want = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
    assert np.array_equal(jpeg(img, 40).permute(1, 2, 0).numpy(), want)
    assert float((jpeg(img, 30) - img).abs().mean()) > float((jpeg(img, 95) - img).abs().mean())


def test_realistic_is_reproducible_from_its_rng_and_lands_on_the_lr_grid():
    d = lookup("degradation", "realistic").factory(None)
    hr = torch.rand(3, 96, 64)
    a, b = d(hr, 4, np.random.default_rng([0, 3, 7])), d(hr, 4, np.random.default_rng([0, 3, 7]))
    c = d(hr, 4, np.random.default_rng([0, 3, 8]))
    assert a.shape == (3, 24, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= a.min() and a.max() <= 1 and torch.equal(a, (a * 255).round() / 255)


def test_antialias_prob_makes_the_resizes_low_pass_as_image_software_does(tmp_path):
    # only resizes: no blur, noise or sinc, JPEG at 100; the HR is white noise, whose every
    # frequency above the LR's Nyquist an aliasing resize folds back in and a low-pass one removes
    quiet = ("blur_prob = 0.0\nresize_prob = [0, 0, 1]\nnoise_range = [0.0, 0.0]\n"
             "poisson_scale_range = [0.0, 0.0]\ngaussian_noise_prob = 1.0\njpeg_range = [100, 100]\n")
    hr = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))

    def lr_spread(prob):  # the LR's standard deviation, per random draw
        params = tmp_path / f"aa{prob}.toml"
        params.write_text(f"[first]\n{quiet}[second]\n{quiet}[final]\nsinc_prob = 0.0\n"
                          f"[mix]\nantialias_prob = {prob}\n")
        d = lookup("degradation", "realistic").factory(params)
        return [float(d(hr, 4, np.random.default_rng([0, 0, i])).std()) for i in range(12)]

    assert max(lr_spread(1.0)) < 0.1  # a 4x average of noise of std 0.29 is about 0.07
    aliased = lr_spread(0.0)
    assert max(aliased) > 0.12  # a bilinear draw keeps half of it
    assert lr_spread(0.0) == aliased  # Real-ESRGAN's setting (0) draws nothing more: its stream unchanged


def test_jpeg_last_prob_puts_the_final_jpegs_blocks_on_the_lr_grid(tmp_path):
    quiet = ("blur_prob = 0.0\nnoise_range = [0.0, 0.0]\ngaussian_noise_prob = 1.0\n"
             "poisson_scale_range = [0.0, 0.0]\n")
    hr = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 260, 260, generator=torch.Generator().manual_seed(1)),
                                        5, stride=1)[0]  # 256 px of detail, which JPEG 20 turns into blocks

    def blockiness(prob):  # column steps across the LR's 8 px grid over those inside its blocks, per draw
        params = tmp_path / f"last{prob}.toml"
        params.write_text(f"[first]\n{quiet}resize_prob = [0, 0, 1]\njpeg_range = [100, 100]\n"
                          f"[second]\n{quiet}resize_prob = [0, 1, 0]\nresize_range = [0.5, 1.0]\n"
                          f"jpeg_range = [20, 20]\n[final]\nsinc_prob = 0.0\njpeg_last_prob = {prob}\n")
        d = lookup("degradation", "realistic").factory(params)
        out = []
        for i in range(6):
            steps = d(hr, 4, np.random.default_rng([0, 0, i])).diff(dim=-1).abs().mean(dim=(0, 1))
            on_grid = torch.arange(steps.numel()) % 8 == 7
            out.append(float(steps[on_grid].mean() / steps[~on_grid].mean()))
        return out

    assert np.median(blockiness(1.0)) > 1.5  # saved last, as a resized photo is: its blocks on the LR's grid
    assert np.median(blockiness(0.0)) < 1.3  # resized after: the blocks smeared off it


def test_parameters_are_data_and_unknown_keys_are_errors(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text("[first]\nnoise_range = [2.0, 3.0]\n")
    params = load_params(mine)
    assert params["first"]["noise_range"] == [2.0, 3.0] and params["first"]["jpeg_range"] == [30, 95]
    mine.write_text("[first]\nnoise_rnge = [2.0, 3.0]\n")
    with pytest.raises(ConfigError, match="mine.toml.*noise_rnge.*allowed"):
        load_params(mine)


def test_bicubic_is_the_papers_pil_downsampling_bit_for_bit():
    from clipsr_cli.train.data import downsample, to_tensor

    im = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 48, 3), dtype=np.uint8))
    got = lookup("degradation", "bicubic").factory(None)(to_tensor(im), 4, np.random.default_rng(0))
    assert torch.equal(got, to_tensor(downsample(im, 4)))


def test_training_with_realistic_degradation_validates_on_a_fixed_degraded_set(tmp_path):
    import dataclasses

    from test_train import tiny_run, train

    from clipsr_cli.train.data import load_validation
    from clipsr_cli.train.run import load_records, make_degradation

    cfg = tiny_run(tmp_path, degradation="realistic", max_steps=2)
    trainer = train(cfg)
    assert trainer.step == 2
    records = load_records("folder", cfg.val_root, "train", cfg.val_captions)[:2]
    degradation = make_degradation(cfg)
    once, again = (load_validation(records, 4, degradation, cfg.seed) for _ in range(2))
    assert all(torch.equal(a.lr, b.lr) for a, b in zip(once, again))  # the same LR at every validation
    bicubic = load_validation(records, 4)
    assert not torch.equal(once[0].lr, bicubic[0].lr)
    assert make_degradation(dataclasses.replace(cfg, degradation="bicubic")) is None


def test_init_weights_starts_a_fine_tune_from_a_trained_generator(tmp_path):
    import dataclasses

    from clipsr_cli.model.bundled import model_file
    from clipsr_cli.model.checkpoint import load_generator
    from clipsr_cli.train.config import TrainConfig
    from clipsr_cli.train.distributed import Dist
    from clipsr_cli.train.experiment import Experiment
    from clipsr_cli.train.trainer import Trainer

    cfg = dataclasses.replace(TrainConfig(), preset="small", scale=4, hr_crop=128, perceptual_weight=0.0,
                              adversarial_weight=0.0, exp_dir=str(tmp_path / "e"))
    trainer = Trainer(cfg, torch.device("cpu"), Dist(), Experiment(tmp_path / "e"))
    trainer.init_from("clipsr-default-x4")
    source = load_generator(model_file(__import__("pathlib").Path("clipsr-default-x4"))).own_state_dict()
    mine = trainer.gen.own_state_dict()
    assert all(torch.equal(mine[k], v) for k, v in source.items())
    assert all(torch.equal(trainer.ema.shadow[k], v) for k, v in source.items())
    tiny = Trainer(dataclasses.replace(cfg, preset="tiny"), torch.device("cpu"), Dist(), Experiment(tmp_path / "t"))
    with pytest.raises(ConfigError, match="init-weights clipsr-default-x4: a small x4 generator"):
        tiny.init_from("clipsr-default-x4")


def photo_like(seed: int, size: int = 48) -> Image.Image:
    """Smooth colours plus grain, off white and black: the JPEG quality of its saves can be read."""
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray(rng.integers(40, 216, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    grain = rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(smooth, np.float64) + grain, 0, 255).astype(np.uint8))


def test_the_real_model_is_chosen_by_name_or_by_real_and_denoise_strength_blends_it(tmp_path):
    """No --weights, --real, --weights clipsr-default-real-x4 and --denoise-strength auto are one model:
    each image at the strength its JPEG quality calls for (a clean PNG: the clean model;
    a JPEG saved at 40: the denoising model).  --denoise-strength s blends the pair at run
    time (0: clean, 1: the denoising model)."""
    from typer.testing import CliRunner

    from clipsr_cli.cli import app

    lr = tmp_path / "lr"
    lr.mkdir()
    photo = photo_like(3)
    photo.save(lr / "a.png")
    photo.save(lr / "b.jpg", quality=40)
    runner, out = CliRunner(), {}
    for name, args in (("default", []), ("real", ["--real"]), ("named", ["--weights", "clipsr-default-real-x4"]),
                       ("auto", ["--denoise-strength", "auto"]),
                       ("clean", ["--weights", "clipsr-default-x4"]), ("s0", ["--denoise-strength", "0"]),
                       ("s1", ["--denoise-strength", "1"]), ("half", ["--denoise-strength", "0.5"]),
                       ("denoise", ["--weights", "clipsr-default-real-denoise-x4"])):
        res = runner.invoke(app, ["upscale", str(lr), "--caption", "a", "-o", str(tmp_path / name), "-q",
                                  "--ext", "png", *args])
        assert res.exit_code == 0, (name, res.output)
        out[name] = {f: np.asarray(Image.open(tmp_path / name / f"{f}.png"), dtype=np.int16) for f in "ab"}
    for f in "ab":
        assert all(np.array_equal(out["real"][f], out[other][f]) for other in ("default", "named", "auto"))
        assert np.abs(out["s1"][f] - out["denoise"][f]).max() <= 1 and np.abs(out["s0"][f] - out["clean"][f]).max() <= 1
    assert np.abs(out["real"]["a"] - out["clean"]["a"]).max() <= 1  # no JPEG traces: the clean model
    assert np.abs(out["real"]["b"] - out["denoise"]["b"]).max() <= 1  # quality 40: the denoising model
    assert not np.array_equal(out["half"]["b"], out["s0"]["b"]) and not np.array_equal(out["half"]["b"], out["s1"]["b"])
    for bad, says in ((["--denoise-strength", "1.5"], "must be in [0, 1]"),
                      (["--denoise-strength", "most"], "give a number in [0, 1] or auto"),
                      (["--denoise-strength", "0.5", "--weights", "clipsr-default-x4"], "drop --weights"),
                      (["--real", "-s", "2"], "no bundled real-world model for x2 (bundled: x4, x8)"),
                      (["--real", "--denoise-strength", "0.5"], "--real is --denoise-strength auto"),
                      (["--weights", "clipsr-default-real-x4", "-s", "8"], "is a x4 model")):
        res = runner.invoke(app, ["upscale", str(lr), "--caption", "a", "-o", str(tmp_path / "x"), *bad])
        assert res.exit_code == 2 and says in " ".join(res.output.split()), (bad, res.output)


def test_real_at_x8_is_the_x8_pair_blended_by_jpeg_quality(tmp_path):
    """x8 has its real model too: the x8 pair, blended per image as at x4, up to x8's top
    strength (quality 30: the top)."""
    from typer.testing import CliRunner

    from clipsr_cli.cli import app
    from clipsr_cli.model.bundled import AUTO_TOP

    lr = tmp_path / "lr"
    lr.mkdir()
    photo_like(4).save(lr / "a.jpg", quality=30)
    runner, out = CliRunner(), {}
    for name, args in (("real", ["--real"]), ("named", ["--weights", "clipsr-default-real-x8"]),
                       ("top", ["--denoise-strength", str(AUTO_TOP[8])]), ("clean", ["--weights", "clipsr-default-x8"])):
        res = runner.invoke(app, ["upscale", str(lr), "--caption", "a", "-s", "8", "-o", str(tmp_path / name),
                                  "--ext", "png", *args])
        assert res.exit_code == 0, (name, res.output)
        out[name] = np.asarray(Image.open(tmp_path / name / "a.png"), dtype=np.int16)
    assert out["real"].shape == (384, 384, 3) and np.array_equal(out["real"], out["named"])
    assert np.array_equal(out["real"], out["top"]) and not np.array_equal(out["real"], out["clean"])


def test_unsharp_mask_raises_edge_contrast_and_leaves_flat_areas_and_faint_detail():
    from clipsr_cli.train.sharpen import gaussian_1d, unsharp_mask

    assert abs(float(gaussian_1d(8.0).sum()) - 1) < 1e-6 and len(gaussian_1d(8.0)) == 49
    flat = torch.full((3, 40, 48), 0.4)
    torch.testing.assert_close(unsharp_mask(flat), flat)
    faint = flat + 0.01 * torch.randn(3, 40, 48)  # under the 10-level threshold everywhere
    assert (unsharp_mask(faint) - faint).abs().max() < 0.01
    edge = torch.full((3, 40, 48), 0.2)
    edge[:, :, 24:] = 0.7
    sharp = unsharp_mask(edge)
    assert sharp[:, :, 22].max() < 0.2 - 0.02 and sharp[:, :, 25].min() > 0.7 + 0.02  # under- and overshoot
    torch.testing.assert_close(sharp[:, :, 0], edge[:, :, 0], atol=2e-3, rtol=0)  # far from it: unchanged


@pytest.mark.parametrize("degradation", [None, "realistic"])
def test_gt_usm_sharpens_the_target_and_makes_the_lr_from_it(tmp_path, degradation):
    from clipsr_cli.plugins.protocols import Record
    from clipsr_cli.train.data import SRDataset, downsample, to_image, to_tensor
    from clipsr_cli.train.sharpen import unsharp_mask

    rng = np.random.default_rng(0)
    arr = np.kron(rng.integers(0, 256, (6, 6, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # blocks: edges
    Image.fromarray(arr).save(tmp_path / "a.png")
    record = Record(tmp_path / "a.png", ("a photo",))
    stage = lookup("degradation", degradation).factory(None) if degradation else None
    plain, sharp = (SRDataset([record], 48, 4, hflip=False, degradation=stage, sharpen=s)[(0, 0)] for s in (0, 0.7))
    torch.testing.assert_close(sharp.hr, unsharp_mask(plain.hr, amount=0.7))
    assert (sharp.hr - plain.hr).abs().max() > 0.05
    if degradation is None:  # PIL's bicubic of the sharpened crop, as the paper's LR is made
        torch.testing.assert_close(sharp.lr, to_tensor(downsample(to_image(sharp.hr), 4)))
    else:  # the same random draws, from the sharpened crop
        torch.testing.assert_close(sharp.lr, stage(sharp.hr, 4, np.random.default_rng([0, 0, 0])))
