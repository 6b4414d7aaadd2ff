import pytest
import torch

from clipsr_cli.model.checkpoint import CheckpointError, load_generator, read_metadata, save_generator
from clipsr_cli.model.generator import Generator


def test_round_trip_reproduces_outputs(tiny_cfg, tiny_clip, tmp_path):
    gen = Generator(tiny_cfg, tiny_clip, 8).eval()
    with torch.no_grad():
        for p in gen.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init state
    path = tmp_path / "g.safetensors"
    save_generator(path, gen, extra={"step": "12"})
    meta = read_metadata(path)
    assert meta["preset"] == "tiny" and meta["scale"] == "8" and meta["step"] == "12"
    loaded = load_generator(path)
    lr = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        a = gen(lr, gen.encode_text(["a boat"]))
        b = loaded(lr, loaded.encode_text(["a boat"]))
    assert loaded.scale == 8
    assert torch.equal(a, b)


def test_truncated_checkpoint_is_refused(tiny_cfg, tiny_clip, tmp_path):
    path = tmp_path / "g.safetensors"
    save_generator(path, Generator(tiny_cfg, tiny_clip, 4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_generator(path)


def test_a_network_this_version_lacks_is_refused_naming_the_version_that_wrote_it(tiny_cfg, tiny_clip, tmp_path):
    """A generator key this clipsr does not know (a later version's network) is an error that
    says which version wrote the file, not "export it again", which cannot help."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "g.safetensors"
    save_generator(path, Generator(tiny_cfg, tiny_clip, 4))
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["model_config"])
    config["generator"]["lr_cleaner"] = 6
    save_file(tensors, str(path), metadata=meta | {"model_config": json.dumps(config), "clipsr_version": "9.0"})
    with pytest.raises(CheckpointError, match=r"unknown key\(s\) lr_cleaner.*written by clipsr 9.0 \(this is "):
        load_generator(path)


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a clipsr generator checkpoint"):
        load_generator(path)


def test_weights_takes_a_training_checkpoint_or_an_experiment_folder(tmp_path):
    """As BasicSR users pass a training checkpoint: its EMA generator, the same
    outputs as the file `clipsr export` writes from it and as EXP/model.safetensors."""
    import dataclasses

    from PIL import Image
    from typer.testing import CliRunner

    from clipsr_cli.cli import app
    from clipsr_cli.train.config import with_preset_defaults
    from clipsr_cli.train.distributed import Dist
    from clipsr_cli.train.experiment import Experiment
    from clipsr_cli.train.run import fit

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 100, 30)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"picture {i}")
    exp = tmp_path / "exp"
    cfg = dataclasses.replace(with_preset_defaults("tiny"), dataset="folder", data_root=str(data), preset="tiny",
                              scale=4, hr_crop=32, batch_size=2, max_steps=2, exp_dir=str(exp), perceptual_weight=0.0,
                              adversarial_weight=0.0, num_workers=0, val_every=0, sample_every=0, checkpoint_every=1,
                              tensorboard=False).validate()
    experiment = Experiment(exp)
    try:
        fit(cfg, torch.device("cpu"), Dist(), experiment)
    finally:
        experiment.close()
    ckpt = sorted((exp / "checkpoints").glob("step_*.safetensors"))[-1]
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(ckpt), "-o", str(tmp_path / "exported.safetensors")]).exit_code == 0
    outputs = {}
    for name, weights in (("ckpt", ckpt), ("exp", exp), ("exported", tmp_path / "exported.safetensors")):
        res = runner.invoke(app, ["upscale", str(data), "-o", str(tmp_path / name), "--weights", str(weights), "-q"])
        assert res.exit_code == 0, (name, res.output)
        outputs[name] = (tmp_path / name / "0.png").read_bytes()
    assert outputs["ckpt"] == outputs["exported"] == outputs["exp"]
    res = runner.invoke(app, ["upscale", str(data), "-o", str(tmp_path / "x"), "--weights", str(data), "-q"])
    assert res.exit_code == 2 and "without model.safetensors" in res.output
