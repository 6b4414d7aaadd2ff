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


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a clipsr generator checkpoint"):
        load_generator(path)
