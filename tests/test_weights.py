import hashlib

import pytest
import torch
from safetensors.torch import save_file

from clipsr_cli.model import weights as W
from clipsr_cli.model.clip import build_clip


def test_clip_loaded_from_local_file_through_open_clip(tiny_cfg, tiny_clip, tmp_path):
    # a different random tower, saved as an open_clip state dict
    other = build_clip(tiny_cfg.__class__.from_dict({**tiny_cfg.to_dict(), "clip": {**tiny_cfg.to_dict()["clip"], "seed": 7}}))
    path = tmp_path / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    loaded = build_clip(tiny_cfg, weights_path=path)
    ref, got = other.state_dict(), loaded.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert not torch.equal(got["token_embedding.weight"], tiny_clip.state_dict()["token_embedding.weight"])
    assert not any(p.requires_grad for p in loaded.parameters())


def test_named_open_clip_model_loads_a_state_dict_file(tmp_path):
    # the paper preset's path: open_clip.create_model(name, pretrained=<file>)
    import open_clip

    from clipsr_cli.model.config import load_preset

    cfg = load_preset("paper")
    src = open_clip.create_model("ViT-B-32-quickgelu")
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = build_clip(cfg, weights_path=path)
    assert torch.equal(model.visual.proj, src.visual.proj)


def _entry(tmp_path, content: bytes):
    return W.WeightsFile("thing", "thing.bin", "https://example.invalid/thing.bin",
                         hashlib.sha256(content).hexdigest())


def test_hash_mismatch_and_truncation_are_refused(tmp_path, monkeypatch):
    good = b"x" * 1000
    entry = _entry(tmp_path, good)
    monkeypatch.setattr(W, "get_entry", lambda name: entry)
    path = tmp_path / "thing.bin"
    path.write_bytes(good)
    assert W.resolve("thing", path=path) == path
    path.write_bytes(good[:500])  # truncated
    with pytest.raises(W.WeightsError, match="corrupt, truncated"):
        W.resolve("thing", path=path)
    with pytest.raises(W.WeightsError, match="example.invalid"):
        W.resolve("thing", weights_dir=tmp_path / "empty")


def test_offline_error_names_file_url_and_place(monkeypatch):
    with pytest.raises(W.WeightsError) as err:
        W.resolve("clip-vit-b-32-openai")
    msg = str(err.value)
    assert "ViT-B-32-openai.safetensors" in msg and "huggingface.co" in msg and "CLIPSR_WEIGHTS_DIR" in msg


def test_bad_download_is_deleted(tmp_path, monkeypatch):
    served = tmp_path / "served.bin"  # a file:// URL stands in for the server
    served.write_bytes(b"wrong")
    entry = W.WeightsFile("thing", "thing.bin", served.as_uri(), hashlib.sha256(b"right").hexdigest())
    monkeypatch.setattr(W, "get_entry", lambda name: entry)
    with pytest.raises(W.WeightsError, match="bad and was deleted"):
        W.resolve("thing", download=True)
    assert list((tmp_path / "cache").glob("*")) == []
    served.write_bytes(b"right")
    got = W.resolve("thing", download=True)
    assert got.read_bytes() == b"right" and got.parent == tmp_path / "cache"


def test_unknown_name_lists_known():
    with pytest.raises(W.WeightsError, match="niqe-pris-params"):
        W.get_entry("nope")


def test_resolver_finds_shared_niqe_params(shared_dir):
    path = W.resolve("niqe-pris-params", weights_dir=shared_dir / "weights")
    import numpy as np

    data = np.load(path)
    assert data["mu_pris_param"].shape == (1, 36) and data["cov_pris_param"].shape == (36, 36)


def test_every_manifest_entry_is_complete():
    for name, entry in W.manifest().items():
        assert "." not in name, name  # a dot would split the TOML table
        if entry.url:
            assert entry.url.startswith("https://"), name
        else:  # bundled: the file must ship in the package, with its full sha256
            from weights import BUNDLED_DIR

            assert (BUNDLED_DIR / entry.filename).is_file() and len(entry.sha256) == 64, name
        assert len(entry.sha256) in (8, 64) and int(entry.sha256, 16) >= 0, name


def test_niqe_parameters_ship_in_the_package_and_work_offline(tmp_path):
    """A fresh install, offline, no weights folder, empty cache (the autouse fixture):
    NIQE resolves to the bundled file, verified, and `score --metrics niqe` runs."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from clipsr_cli.cli import app
    from weights import BUNDLED_DIR

    path = W.resolve("niqe-pris-params")
    assert path.parent == BUNDLED_DIR and W.sha256sum(path) == W.get_entry("niqe-pris-params").sha256
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (25, 25, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 200x200
    Image.fromarray(smooth).save(tmp_path / "a.png")
    res = CliRunner().invoke(app, ["score", str(tmp_path), "--metrics", "niqe"])
    assert res.exit_code == 0 and "niqe" in res.output and "unavailable" not in res.output, res.output


def test_a_file_without_its_seeded_clip_rebuilds_the_tower_the_clean_model_carries():
    """The real-world models leave their random CLIP out (export --no-clip): loading
    rebuilds it from the preset's seed, which must be the tower clipsr-default-x4 stores."""
    import torch
    from safetensors.torch import load_file

    from clipsr_cli.model.checkpoint import load_generator

    stored = {k[5:]: v for k, v in load_file(str(W.resolve("clipsr-default-x4"))).items() if k.startswith("clip.")}
    for name in ("clipsr-default-real-denoise-x4", "clipsr-default-real-denoise-x8"):
        assert stored and not any(k.startswith("clip.") for k in load_file(str(W.resolve(name))))
        rebuilt = load_generator(W.resolve(name)).clip.state_dict()
        assert all(torch.equal(rebuilt[k].half(), v.half()) for k, v in stored.items())
