"""`clipsr export MODEL --onnx FILE` and `upscale --weights FILE.onnx`: ONNX
Runtime's CPU provider gives the PyTorch output, at x4 and x8, on the examples'
odd sizes, through the same pipeline."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli import app

pytest.importorskip("onnxruntime", reason="ONNX tests need the [onnx] extra (part of [test])")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny x4 and x8 generators saved as clipsr files, exported to ONNX by the CLI,
    both exports at once (tracing takes ~35 CPU-seconds each)."""
    from clipsr_cli.model.checkpoint import save_generator
    from clipsr_cli.model.clip import load_clip
    from clipsr_cli.model.config import load_preset
    from clipsr_cli.model.generator import Generator

    folder = tmp_path_factory.mktemp("onnx")
    cfg = load_preset("tiny")
    procs, files = [], {}
    for scale in (4, 8):
        torch.manual_seed(scale)
        gen = Generator(cfg, load_clip(cfg), scale)
        with torch.no_grad():  # affines off identity: the caption changes the output
            for name, p in gen.named_parameters():
                if name.endswith(("gamma.2.weight", "beta.2.weight")):
                    p.normal_(0, 0.05)
        files[scale] = (folder / f"x{scale}.safetensors", folder / f"x{scale}.onnx")
        save_generator(files[scale][0], gen)
        procs.append(subprocess.Popen([sys.executable, "-m", "clipsr_cli", "export", str(files[scale][0]), "--onnx",
                                       str(files[scale][1])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}))
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    return files


def _example(name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(EXAMPLES / name).convert("RGB"))).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("scale", [4, 8])
def test_onnx_runtime_gives_the_pytorch_output_within_1e_4(exported, scale):
    from clipsr_cli.model.checkpoint import load_generator
    from clipsr_cli.model.onnx import OnnxGenerator

    torch_file, onnx_file = exported[scale]
    gen, ort_gen = load_generator(torch_file), OnnxGenerator(onnx_file)
    assert ort_gen.scale == scale and ort_gen.cfg == gen.cfg
    captions = ["a ginger tabby cat looking to the side", "a rocket on a launch pad under a blue sky"]
    with torch.no_grad():
        cond = gen.encode_text(captions)
    ort_cond = ort_gen.encode_text(captions)
    assert torch.allclose(ort_cond.sentence, cond.sentence, atol=1e-5)
    assert torch.allclose(ort_cond.prompts, cond.prompts, atol=1e-5)
    for name in ("chelsea.png", "rocket.jpg", "astronaut.png"):  # 112x75, 160x106, 64x64
        lr = _example(name)[None].repeat(2, 1, 1, 1)  # a batch of two, a caption each
        with torch.no_grad():
            want = gen(lr, cond)
        got = ort_gen(lr, ort_cond)
        assert got.shape == want.shape == (2, 3, lr.shape[2] * scale, lr.shape[3] * scale)
        assert (got - want).abs().max().item() < 1e-4, name
    assert not torch.allclose(want[0], want[1])  # the two captions steer it apart


def test_upscale_with_onnx_weights_writes_the_pytorch_outputs(exported, tmp_path):
    torch_file, onnx_file = exported[4]
    runner = CliRunner()
    for name, weights in (("torch", torch_file), ("onnx", onnx_file)):
        res = runner.invoke(app, ["upscale", str(EXAMPLES), "--captions", str(EXAMPLES / "captions.json"),
                                  "--weights", str(weights), "-o", str(tmp_path / name), "--ext", "png", "-q",
                                  "--precision", "fp32"])  # not bf16 where the CPU has AMX: ONNX runs fp32
        assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "torch").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "onnx").iterdir()) and len(names) == 5
    for n in names:
        a = np.asarray(Image.open(tmp_path / "torch" / n), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "onnx" / n), dtype=np.int16)
        assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.999, n
    res = runner.invoke(app, ["upscale", str(EXAMPLES), "--caption", "a", "--weights", str(onnx_file), "-s", "8",
                              "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "x4 model" in res.output
