"""`clipsr train`: config precedence, losses, state files, the loop, resume,
the NaN guard, data parallelism, and that it learns to use the caption."""

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from clipsr_cli.cli import app
from clipsr_cli.model.checkpoint import load_generator
from clipsr_cli.model.config import ConfigError
from clipsr_cli.model.weights import WeightsError
from clipsr_cli.train.config import TrainConfig, resolve_config, run_config, with_preset_defaults
from clipsr_cli.train.data import val_pair
from clipsr_cli.train.distributed import Dist
from clipsr_cli.train.experiment import Experiment
from clipsr_cli.train.losses import PerceptualLoss, d_hinge_loss, load_vgg19_features, ma_gp, vgg19_features
from clipsr_cli.train.run import TrainingDiverged, fit
from clipsr_cli.train.state import StateError, load_state, save_state
from clipsr_cli.train.trainer import Trainer
from stages.data.datasets import load_folder
from stages.metrics.fullref import psnr

CPU = torch.device("cpu")


def make_folder(root: Path, n: int = 8, size: int = 48) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    caps = {}
    for i in range(n):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(root / f"{i}.png")
        caps[f"{i}.png"] = [f"picture number {i}", f"another caption of {i}"]
    (root / "caps.json").write_text(json.dumps(caps))
    return root


def tiny_run(tmp_path: Path, **kw) -> TrainConfig:
    data = make_folder(tmp_path / "data")
    base = dict(dataset="folder", data_root=str(data), captions=str(data / "caps.json"), preset="tiny", scale=4,
                hr_crop=32, batch_size=4, max_steps=4, exp_dir=str(tmp_path / "exp"), perceptual_weight=0.0,
                num_workers=0, log_every=1, sample_every=2, val_every=2, checkpoint_every=2,
                val_root=str(data), val_captions=str(data / "caps.json"), val_images=2, tensorboard=False)
    base.update(kw)
    # what `clipsr train --preset ...` runs: the preset's own training defaults under the options given
    return dataclasses.replace(with_preset_defaults(base["preset"]), **base).validate()


def train(cfg: TrainConfig) -> Trainer:
    """What `clipsr train` runs, in this process: with the run's thread count, as the
    CLI sets it (a run compared with a CLI run must do its sums in the same order)."""
    exp = Experiment(Path(cfg.exp_dir))
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return fit(cfg, CPU, Dist(), exp)
    finally:
        torch.set_num_threads(threads)
        exp.close()


def final_state(exp_dir) -> dict[str, torch.Tensor]:
    last = sorted(Path(exp_dir, "checkpoints").glob("step_*.safetensors"))[-1]
    return load_file(str(last))


# --- configuration ---------------------------------------------------------------
def test_config_precedence_defaults_file_cli(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('batch_size = 3\nlr_g = 1\npreset = "tiny"\n')
    cfg = resolve_config(f, {"batch_size": None, "preset": "paper", "scale": None})
    assert cfg.batch_size == 3  # unset CLI option keeps the file's value
    assert cfg.lr_g == 1.0 and isinstance(cfg.lr_g, float)
    assert cfg.preset == "paper"  # given on the CLI: wins
    assert cfg.lr_d == 4e-4 and cfg.beta1 == 0.0 and cfg.beta2 == 0.9  # the paper's defaults
    f.write_text("batch_sise = 3\n")
    with pytest.raises(ConfigError, match="unknown key.*batch_sise"):
        resolve_config(f, {})
    f.write_text('batch_size = "big"\n')
    with pytest.raises(ConfigError, match="batch_size"):
        resolve_config(f, {})
    f.write_text("hr_rescale = [0.5, 1]\n")
    assert resolve_config(f, {}).hr_rescale == (0.5, 1.0)
    for bad in ((1.0, 0.5), (0.0, 1.0)):
        bad_cfg = dataclasses.replace(resolve_config(None, {}), hr_rescale=bad,
                                      exp_dir=str(tmp_path), data_root=str(tmp_path))
        with pytest.raises(ConfigError, match=r"hr_rescale .*0 < low <= high"):
            bad_cfg.validate()


def test_every_config_key_is_a_train_option():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in result.output, f.name


def test_saved_config_round_trips(tmp_path):
    cfg = tiny_run(tmp_path, lr_g=3e-4, perceptual_layers=(1.0, 2.0, 3.0, 4.0, 5.0))
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert resolve_config(path, {}) == cfg


# --- losses ------------------------------------------------------------------------
def test_hinge_and_magp_match_their_formulas():
    real, fake, mis = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0]), torch.tensor([0.5, -1.5])
    # relu(1 - real) = [0, .5]; relu(1 + fake) = [0, 1]; relu(1 + mis) = [1.5, 0]
    assert d_hinge_loss(real, fake, mis).item() == pytest.approx(0.25 + 0.5 * (0.5 + 0.75))
    x = torch.randn(3, 4, requires_grad=True)
    s = torch.randn(3, 2, requires_grad=True)
    out = (x * 2).sum(1) + (s * 3).sum(1)  # d/dx = 2, d/ds = 3 -> norm^2 = 4*4 + 9*2 = 34
    assert ma_gp(out, (x, s), weight=2.0, power=6.0).item() == pytest.approx(2 * 34**3, rel=1e-5)


def test_perceptual_loss_loads_vgg19_file_and_normalises(tmp_path):
    torch.manual_seed(0)
    net = vgg19_features()
    path = tmp_path / "vgg.pth"
    torch.save({f"features.{k}": v for k, v in net.state_dict().items()} | {"classifier.0.weight": torch.zeros(1)},
               path)
    loaded = load_vgg19_features(path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    loss = PerceptualLoss(loaded)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    y = torch.rand(1, 3, 32, 32)
    assert loss(y, y).item() == 0.0
    value = loss(x, y)
    value.backward()
    assert value.item() > 0 and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    # ImageNet normalisation happens inside: relu1_1 of the normalised input
    first = loaded[:2]((y - loss.mean) / loss.std)
    assert torch.allclose(loss._activations(y)[0], first)


def test_perceptual_loss_offline_says_how_to_go_on(tmp_path):
    cfg = tiny_run(tmp_path, perceptual_weight=1.0)
    with pytest.raises(WeightsError, match=r"vgg19-dcbb9e9d.pth.*--perceptual-weight 0"):
        Trainer(cfg, CPU, Dist(), Experiment(tmp_path / "exp"))


# --- state files ------------------------------------------------------------------------
def test_training_state_round_trips_without_pickle(tmp_path):
    state = {"step": 7, "opt": {"state": {0: {"exp_avg": torch.arange(3.0), "step": torch.tensor(5.0)}},
                                "param_groups": [{"lr": 1e-4, "betas": (0.0, 0.9), "params": [0, 1]}]},
             "rng": torch.get_rng_state(), "none": None, "flag": True}
    save_state(tmp_path / "s.safetensors", state)
    back, meta = load_state(tmp_path / "s.safetensors")
    assert back["step"] == 7 and back["none"] is None and back["flag"] is True
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], torch.arange(3.0))
    assert back["opt"]["param_groups"][0]["betas"] == (0.0, 0.9)
    assert torch.equal(back["rng"], state["rng"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(StateError, match="bad.safetensors"):
        load_state(tmp_path / "bad.safetensors")


# --- the loop -------------------------------------------------------------------------------
def test_training_writes_an_experiment_that_upscale_can_use(tmp_path):
    cfg = tiny_run(tmp_path)
    trainer = train(cfg)
    exp = Path(cfg.exp_dir)
    assert trainer.step == 4 and trainer.disc is not None
    assert resolve_config(exp / "config.toml", {}) == cfg
    assert shlex.join(sys.argv) in (exp / "command.txt").read_text()  # the command line that ran
    lines = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["kind"] == "train"]
    assert [x["step"] for x in train_lines] == [1, 2, 3, 4]
    assert all(np.isfinite(x[k]) for x in train_lines for k in ("loss_g", "l1", "adv", "loss_d", "magp"))
    vals = [x for x in lines if x["kind"] == "val"]
    assert "bicubic_psnr" in vals[0] and [x["step"] for x in vals[1:]] == [2, 4] and "ssim" in vals[1]
    assert sorted(p.name for p in (exp / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert (exp / "best.safetensors").is_file()
    gen = load_generator(exp / "model.safetensors")
    assert gen.scale == 4 and gen.cfg.generator.hr_crop == 32
    with torch.no_grad():
        out = gen(torch.rand(1, 3, 8, 12), gen.encode_text(["a picture"]))
    assert out.shape == (1, 3, 32, 48)
    # the exported generator is the EMA, which differs from the raw weights
    raw = trainer.gen.own_state_dict()
    ema = gen.own_state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())


def test_bf16_autocast_trains_with_the_discriminator(tmp_path):
    cfg = tiny_run(tmp_path, max_steps=2, precision="bf16", val_every=0, sample_every=0)
    trainer = train(cfg)
    assert trainer.step == 2 and trainer.disc is not None
    lines = [json.loads(x) for x in (Path(cfg.exp_dir) / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x[k]) for x in lines if x["kind"] == "train" for k in ("loss_g", "adv", "loss_d"))


def test_export_writes_the_generator_from_a_checkpoint(tmp_path):
    cfg = tiny_run(tmp_path, max_steps=2, val_every=0, sample_every=0)
    train(cfg)
    ckpt = next(Path(cfg.exp_dir, "checkpoints").glob("*.safetensors"))
    result = CliRunner().invoke(app, ["export", str(ckpt), "-o", str(tmp_path / "g.safetensors"), "--raw"])
    assert result.exit_code == 0, result.output
    gen = load_generator(tmp_path / "g.safetensors")
    state, _ = load_state(ckpt)
    assert all(torch.equal(v, state["gen"][k]) for k, v in gen.own_state_dict().items())


def test_existing_experiment_is_never_overwritten(tmp_path):
    cfg = tiny_run(tmp_path, max_steps=1, val_every=0, sample_every=0)
    train(cfg)
    before = (Path(cfg.exp_dir) / "metrics.jsonl").read_text()
    args = ["train", "--exp-dir", cfg.exp_dir, "--data-root", cfg.data_root, "--captions", cfg.captions,
            "--preset", "tiny", "--hr-crop", "32", "--perceptual-weight", "0", "--num-workers", "0", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "pass --resume" in result.output
    assert (Path(cfg.exp_dir) / "metrics.jsonl").read_text() == before
    with pytest.raises(ConfigError, match="cannot change scale"):
        run_config(None, {"exp_dir": cfg.exp_dir, "resume": True, "scale": 8})


def test_unset_folders_default_to_datasets_and_experiments_and_resume_finds_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="--data-root datasets/cub: no such folder \\(the default"):
        run_config(None, {"dataset": "cub"})  # `clipsr train --dataset cub`, as a user first types it
    make_folder(tmp_path / "datasets" / "folder")
    args = ["train", "--dataset", "folder", "--captions", "datasets/folder/caps.json", "--preset", "tiny",
            "--hr-crop", "32", "--batch-size", "2", "--perceptual-weight", "0", "--num-workers", "0", "--val-every", "0",
            "--sample-every", "0", "--val-images", "2", "--no-tensorboard", "-q"]
    result = CliRunner().invoke(app, args + ["--max-steps", "1"])
    assert result.exit_code == 0, result.output
    exp = tmp_path / "experiments" / "folder-tiny-x4"
    assert [p.name for p in (exp / "checkpoints").glob("step_*.safetensors")] == ["step_00000001.safetensors"]
    result = CliRunner().invoke(app, args + ["--max-steps", "2", "--resume"])  # the same folders, found again
    assert result.exit_code == 0, result.output
    assert "step_00000002.safetensors" in [p.name for p in (exp / "checkpoints").glob("step_*.safetensors")]
    given = run_config(None, {"data_root": str(tmp_path / "datasets" / "folder"), "exp_dir": "runs/a"})
    assert given.exp_dir == "runs/a" and given.data_root == str(tmp_path / "datasets" / "folder")  # given: kept


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    # a constant rate: the resumed run extends max_steps, which moves a cosine schedule (the
    # killed-run test below resumes the preset's cosine schedule with the same max_steps)
    common = dict(val_every=0, sample_every=0, checkpoint_every=3, lr_schedule="constant")
    straight = tiny_run(tmp_path / "a", max_steps=6, **common)
    train(straight)
    first = tiny_run(tmp_path / "b", max_steps=3, **common)
    train(first)
    resumed = run_config(None, {"exp_dir": first.exp_dir, "resume": True, "max_steps": 6})
    assert resumed.batch_size == 4 and resumed.hr_crop == 32  # the saved config is the base
    train(resumed)
    a, b = final_state(straight.exp_dir), final_state(first.exp_dir)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    common = dict(max_steps=30, val_every=0, sample_every=0, checkpoint_every=2, log_every=1)
    reference = tiny_run(tmp_path / "ref", **common)
    train(reference)
    cfg = tiny_run(tmp_path / "killed", **common)
    args = [sys.executable, "-m", "clipsr_cli", "train", "-q", "--exp-dir", cfg.exp_dir, "--data-root", cfg.data_root,
            "--captions", cfg.captions, "--val-root", cfg.val_root, "--val-captions", cfg.val_captions,
            "--preset", "tiny", "--hr-crop", "32", "--batch-size", "4", "--perceptual-weight", "0",
            "--num-workers", "0", "--max-steps", "30", "--checkpoint-every", "2", "--val-every", "0",
            "--sample-every", "0", "--no-tensorboard", "--val-images", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = Path(cfg.exp_dir, "checkpoints")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ckpts.glob("step_*.safetensors"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_done = len(Path(cfg.exp_dir, "metrics.jsonl").read_text().splitlines())
    assert steps_done < 30, "the run finished before it could be killed"
    resumed = run_config(None, {"exp_dir": cfg.exp_dir, "resume": True})
    train(resumed)
    a, b = final_state(reference.exp_dir), final_state(cfg.exp_dir)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, monkeypatch):
    cfg = tiny_run(tmp_path, max_steps=20, val_every=0, sample_every=0, checkpoint_every=2, max_bad_steps=3,
                   adversarial_weight=0.0)
    real = Trainer.g_losses
    seen = {"calls": 0}

    def poisoned(self, hr, sr, sentence):
        seen["calls"] += 1
        out = real(self, hr, sr, sentence)
        if seen["calls"] > 4:
            out["loss_g"] = out["loss_g"] * float("nan")
        return out

    monkeypatch.setattr(Trainer, "g_losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"3 non-finite steps in a row.*step_00000004"):
        train(cfg)
    log = (Path(cfg.exp_dir) / "train.log").read_text()
    assert log.count("non-finite loss, step skipped") == 3
    # nothing was written from the bad steps: the last checkpoint is step 4
    assert sorted(p.name for p in Path(cfg.exp_dir, "checkpoints").iterdir())[-1] == "step_00000004.safetensors"


def test_ablations_are_configurations(tmp_path):
    preset = tmp_path / "ablation.toml"
    text = (Path(__file__).parents[1] / "stages" / "presets" / "tiny.toml").read_text()
    text = text.replace('text_encoder = "clip"', 'text_encoder = "none"').replace("clip_vit = true", "clip_vit = false")
    preset.write_text(text.replace('config = "clipsr-tiny-clip.json"',
                                   f'config = "{Path(__file__).parents[1] / "stages/presets/clipsr-tiny-clip.json"}"'))
    trainer = train(tiny_run(tmp_path, preset=str(preset), max_steps=2, adversarial_weight=0.0, val_every=0,
                             sample_every=0))
    assert trainer.disc is None and trainer.opt_d is None
    assert trainer.gen.refiner.vit is None and type(trainer.gen.text).__name__ == "NoText"


def test_data_parallel_two_processes_equal_one_process_with_twice_the_batch(tmp_path):
    pytest.importorskip("torch.distributed.run")
    common = dict(max_steps=3, val_every=0, sample_every=0, checkpoint_every=3, adversarial_weight=0.0)
    single = tiny_run(tmp_path / "one", batch_size=4, **common)
    train(single)
    two = tiny_run(tmp_path / "two", batch_size=2, **common)
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
            "-m", "clipsr_cli", "train", "-q", "--device", "cpu", "--exp-dir", two.exp_dir,
            "--data-root", two.data_root, "--captions", two.captions, "--preset", "tiny", "--hr-crop", "32",
            "--batch-size", "2", "--max-steps", "3", "--perceptual-weight", "0", "--adversarial-weight", "0",
            "--num-workers", "0", "--checkpoint-every", "3", "--val-every", "0", "--sample-every", "0",
            "--no-tensorboard"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = final_state(single.exp_dir), final_state(two.exp_dir)
    for k in a:
        if k.startswith("s.gen.") and a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert b["s.opt_g.state.0.step"].item() == 3  # three real optimiser steps were taken


# --- it learns to use the caption --------------------------------------------------------------
def make_stripes(root: Path, n: int = 16) -> Path:
    """HR: fine stripes, vertical or horizontal, in a random colour.  At x4 the
    period-4 pattern averages out: the LR is a flat colour and only the caption
    says which way the stripes run."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    line = np.tile(np.array([1.0, 0.0, 0.0, 1.0]), 8)  # symmetric, so flips keep the phase
    caps = {}
    for i in range(n):
        vertical = i % 2 == 0
        pattern = np.broadcast_to(line[None, :] if vertical else line[:, None], (32, 32))
        colour = rng.uniform(0.2, 0.8, 3)
        arr = np.clip((0.3 + 0.4 * pattern[..., None]) * colour / 0.5, 0, 1)
        Image.fromarray((arr * 255).round().astype(np.uint8)).save(root / f"{i:02d}.png")
        caps[f"{i:02d}.png"] = "vertical stripes" if vertical else "horizontal stripes"
    (root / "caps.json").write_text(json.dumps(caps))
    return root


def caption_psnr(cfg: TrainConfig, data: Path) -> tuple[float, float]:
    """Mean PSNR of the trained model over the training images with each image's
    caption, and with its neighbour's (the other orientation)."""
    gen = train(cfg).averaged_generator()
    records = load_folder(data, "train", str(data / "caps.json"))
    captions = [r.captions[0] for r in records]
    shuffled = captions[1:] + captions[:1]  # neighbours alternate: every caption is the wrong one
    right, wrong = [], []
    with torch.no_grad():
        for rec, good, bad in zip(records, captions, shuffled):
            hr, lr = val_pair(rec, 4)
            assert lr.std(dim=(1, 2)).max() < 0.02  # the LR does not show the stripes
            for caption, scores in ((good, right), (bad, wrong)):
                sr = gen(lr[None], gen.text(gen.text.encode([caption]))).clamp(0, 1)
                scores.append(float(psnr(sr, hr[None])[0]))
    return float(np.mean(right)), float(np.mean(wrong))


def test_it_learns_a_caption_margin_a_text_blind_model_cannot(tmp_path):
    data = make_stripes(tmp_path / "stripes")
    tiny = (Path(__file__).parents[1] / "stages/presets/tiny.toml").read_text()
    blind = tmp_path / "blind.toml"  # the "no text" ablation of the same preset
    blind.write_text(tiny.replace('text_encoder = "clip"', 'text_encoder = "none"'))
    tif = tmp_path / "tif.toml"  # the TIFBlocks alone carry the caption: no CLIP-ViT prompts, no upsampler affines
    tif.write_text(tiny.replace("clip_vit = true", "clip_vit = false").replace("upsampler_text = true",
                                                                                "upsampler_text = false"))
    (tmp_path / "clipsr-tiny-clip.json").write_text(
        (Path(__file__).parents[1] / "stages/presets/clipsr-tiny-clip.json").read_text())
    runs = {}
    for name, preset in (("text", "tiny"), ("blind", str(blind)), ("tif", str(tif))):
        cfg = TrainConfig(dataset="folder", data_root=str(data), captions=str(data / "caps.json"), preset=preset,
                          scale=4, hr_crop=32, batch_size=8, max_steps=50, lr_g=1e-3, exp_dir=str(tmp_path / name),
                          perceptual_weight=0.0, adversarial_weight=0.0, num_workers=0, sample_every=0,
                          val_every=0, checkpoint_every=1000, tensorboard=False).validate()
        runs[name] = caption_psnr(cfg, data)
    (right, wrong), (blind_right, blind_wrong), (tif_right, tif_wrong) = runs["text"], runs["blind"], runs["tif"]
    print(f"correct caption {right:.2f} dB, wrong {wrong:.2f} dB; text-blind {blind_right:.2f} dB; "
          f"TIFBlocks alone {tif_right:.2f} / {tif_wrong:.2f} dB")
    assert tif_right - tif_wrong > 2.0  # the TIFBlocks alone already steer by the caption
    assert right - wrong > 3.0  # the caption decides which way the stripes run
    assert abs(blind_right - blind_wrong) < 1e-6  # the ablation really ignores the caption ...
    assert right > blind_right + 2.0  # ... and cannot reach what the caption gives


# --- caption-aware flips and preset training defaults ---------------------------------------------
def test_a_flip_mirrors_the_caption_or_is_not_applied():
    from clipsr_cli.train.data import mirror_caption

    assert mirror_caption("Rising stripes left of a RIGHT-facing bird") == "Falling stripes right of a LEFT-facing bird"
    assert mirror_caption("turning anticlockwise, / then \\") == "turning clockwise, \\ then /"
    assert mirror_caption("a blue circle") == "a blue circle"  # nothing to mirror
    assert mirror_caption("bright light") == "bright light"  # whole words only
    assert mirror_caption("a sign that reads STOP") is None  # writing reads backwards: no flip


def test_flipped_samples_carry_the_mirrored_caption(tmp_path):
    from clipsr_cli.plugins.protocols import Record
    from clipsr_cli.train.data import SRDataset

    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:, :8] = 255  # white on the left
    Image.fromarray(arr).save(tmp_path / "a.png")
    data = SRDataset([Record(tmp_path / "a.png", ("white on the left",))], hr_crop=16, scale=4)
    samples = [data[(epoch, 0)] for epoch in range(16)]
    for s in samples:
        white_left = s.hr[:, :, :8].mean() > s.hr[:, :, 8:].mean()
        assert s.caption == ("white on the left" if white_left else "white on the right")
    assert len({s.caption for s in samples}) == 2  # both flipped and unflipped samples were drawn


def test_a_preset_carries_training_defaults_under_file_and_cli(tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text((Path(__file__).parents[1] / "stages/presets/tiny.toml").read_text()
                      .replace("[train]", "[train]\nlr_d = 0.5"))
    cfg = resolve_config(None, {"preset": str(preset)})
    assert cfg.lr_d == 0.5  # the preset's own default
    f = tmp_path / "c.toml"
    f.write_text("lr_d = 0.25\n")
    assert resolve_config(f, {"preset": str(preset)}).lr_d == 0.25  # a config file wins
    assert resolve_config(f, {"preset": str(preset), "lr_d": 0.125}).lr_d == 0.125  # the command line wins
    assert resolve_config(None, {"preset": "paper"}).lr_g == 1e-4  # the paper preset keeps the paper's
    preset.write_text(preset.read_text().replace("lr_d = 0.5", "lr_dd = 0.5"))
    with pytest.raises(ConfigError, match=r"\[train\].*lr_dd"):
        resolve_config(None, {"preset": str(preset)})


# --- the step's costs ------------------------------------------------------------------------
def test_text_feature_cache_gives_the_encoders_features_and_encodes_each_caption_once(tiny_cfg, tiny_clip):
    from clipsr_cli.model.generator import Generator
    from clipsr_cli.train.text_cache import TextFeatureCache

    gen = Generator(tiny_cfg, tiny_clip, 4)
    asked = []

    def encode(captions):
        asked.append(list(captions))
        return gen.text.encode(captions)

    cache = TextFeatureCache(encode)
    listed = ["a red bird", "a long caption about a small yellow bird on a branch", ""]
    assert cache.fill(listed, chunk=2)
    assert asked == [sorted(listed)[:2], sorted(listed)[2:]]  # up front, in a fixed order
    batch = ["", "a red bird", "a new one", "a red bird"]
    got = cache(batch)
    assert asked[2:] == [["a new one"]]  # only the one not listed, alone
    want = gen.text.encode(batch)
    assert got.tokens.shape[1] <= want.tokens.shape[1]
    assert torch.equal(got.pad_mask, want.pad_mask[:, : got.tokens.shape[1]])
    torch.testing.assert_close(got.sentence, want.sentence, atol=1e-5, rtol=0)
    with torch.no_grad():  # the prompts, which attend over the tokens, come out the same
        torch.testing.assert_close(gen.text(got).prompts, gen.text(want).prompts, atol=1e-5, rtol=0)


def test_text_feature_cache_too_large_keeps_nothing_and_passes_batches_through(tiny_cfg, tiny_clip):
    from clipsr_cli.model.generator import Generator
    from clipsr_cli.train.text_cache import TextFeatureCache

    gen = Generator(tiny_cfg, tiny_clip, 4)
    captions = [f"a {w} bird" for w in ("red", "green", "blue", "yellow", "white", "black")]
    one = TextFeatureCache(gen.text.encode)
    assert one.fill(captions[:1])
    cache = TextFeatureCache(gen.text.encode, max_bytes=3 * one.bytes)
    assert not cache.fill(captions, chunk=2)  # judged after the first batch of two: six would not fit
    assert cache.entries == {} and cache.bytes == 0 and not cache.filled
    got, want = cache(captions[:2]), gen.text.encode(captions[:2])
    assert torch.equal(got.sentence, want.sentence) and cache.entries == {}


def test_every_caption_a_sample_can_carry_is_listed(tmp_path):
    from clipsr_cli.train.data import SRDataset

    records = load_folder(make_folder(tmp_path / "d", n=2), "train", str(tmp_path / "d" / "caps.json"))
    records[0] = dataclasses.replace(records[0], captions=(*records[0].captions, "a bird facing left"))
    data = SRDataset(records, 32, 4, hflip=True, caption_dropout=0.1)
    drawn = {data[(epoch, i)].caption for epoch in range(40) for i in range(2)}
    assert drawn <= data.possible_captions()
    assert {"a bird facing right", ""} <= data.possible_captions()


def test_the_optimisers_use_the_fused_kernel_where_pytorch_has_one(tmp_path):
    trainer = Trainer(tiny_run(tmp_path, adversarial_weight=0.01), CPU, Dist(), Experiment(tmp_path / "exp"))
    assert trainer.opt_g.defaults["fused"] and trainer.opt_d.defaults["fused"]


def test_pixel_losses_are_weighted_as_configured(tmp_path):
    trainer = train(tiny_run(tmp_path, max_steps=1, l1_weight=0.5, mse_weight=3.0, adversarial_weight=0.0,
                             val_every=0, sample_every=0))
    hr, sr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    out = trainer.g_losses(hr, sr, None)
    torch.testing.assert_close(out["mse"], ((sr - hr) ** 2).mean())
    torch.testing.assert_close(out["loss_g"], 0.5 * (sr - hr).abs().mean() + 3.0 * ((sr - hr) ** 2).mean())
    assert "mse" not in train(tiny_run(tmp_path / "l1", max_steps=1, mse_weight=0.0, adversarial_weight=0.0,
                                       val_every=0, sample_every=0)).g_losses(hr, sr, None)  # 0: not computed


# --- the texture critic (Real-ESRGAN's U-Net discriminator) ---------------------------
def test_texture_critic_learns_to_tell_sharp_from_blurred():
    from clipsr_cli.model.pixel_discriminator import UNetDiscriminator
    from clipsr_cli.train.losses import d_bce_loss

    torch.manual_seed(0)
    disc = UNetDiscriminator(channels=8)
    assert disc(torch.rand(2, 3, 32, 48)).shape == (2, 1, 32, 48)  # one logit per pixel
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.9, 0.99))
    blur = torch.full((3, 1, 5, 5), 1 / 25)

    def pair(n=8):
        sharp = torch.rand(n, 3, 32, 32)
        return sharp, torch.nn.functional.conv2d(sharp, blur, padding=2, groups=3)

    for _ in range(40):
        sharp, blurred = pair()
        loss = d_bce_loss(disc(sharp), disc(blurred))
        opt.zero_grad()
        loss.backward()
        opt.step()
    sharp, blurred = pair()  # unseen images
    with torch.no_grad():
        assert (disc(sharp).mean((1, 2, 3)) > disc(blurred).mean((1, 2, 3))).all()
    # spectral normalisation keeps each normalised layer's largest singular value near 1
    conv = disc.down[0]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert 0.8 < float(sigma) < 1.2


def test_texture_critic_trains_and_resumes_bit_identically(tmp_path):
    common = dict(val_every=0, sample_every=0, checkpoint_every=2, lr_schedule="constant", adversarial_weight=0.0,
                  pixel_adversarial_weight=0.1, pixel_disc_channels=8)
    straight = tiny_run(tmp_path / "a", max_steps=4, **common)
    trainer = train(straight)
    assert trainer.disc is None and trainer.pixel_disc is not None
    lines = [json.loads(x) for x in (Path(straight.exp_dir) / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x["pixel_adv"]) and np.isfinite(x["loss_pixel_d"]) for x in lines if x["kind"] == "train")
    first = tiny_run(tmp_path / "b", max_steps=2, **common)
    train(first)
    train(run_config(None, {"exp_dir": first.exp_dir, "resume": True, "max_steps": 4}))
    a, b = final_state(straight.exp_dir), final_state(first.exp_dir)
    assert any(k.startswith("s.pixel_disc.") for k in a) and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    with pytest.raises(ConfigError, match="cannot change pixel_disc_channels"):
        run_config(None, {"exp_dir": first.exp_dir, "resume": True, "pixel_disc_channels": 16})
