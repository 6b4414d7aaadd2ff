"""The bundled models' outputs on small crops of the examples, against PNGs the
same models wrote before the code was reorganised (tests/data/bundled/).

Refactors must not change what a user gets.  On the machine that wrote the
references the outputs are bit-identical; another CPU may order a convolution's
sums differently (AVX-512 vs AVX2 kernels), which can move a rare 8-bit value
by one, so the check allows that and nothing more.  The references are fp32, so the runs ask for
fp32: on a CPU with AMX / AVX512-BF16 `upscale` would otherwise pick bf16 (which moves 4-6% of
the values by one; its own checks are in test_cli.py and test_kernels.py).
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli import app

DATA = Path(__file__).parent / "data" / "bundled"
EDITABILITY = Path(__file__).resolve().parents[1] / "examples" / "editability" / "lr"


def _compare(out_dir: Path, ref_dir: Path) -> None:
    refs = sorted(ref_dir.glob("*.png"))
    assert refs, ref_dir
    for ref in refs:
        got = np.asarray(Image.open(out_dir / ref.name), dtype=np.int16)
        want = np.asarray(Image.open(ref), dtype=np.int16)
        assert got.shape == want.shape, ref.name
        diff = np.abs(got - want)
        assert diff.max() <= 1 and (diff == 0).mean() >= 0.995, (ref.name, int(diff.max()), float((diff == 0).mean()))


@pytest.mark.parametrize("model, lr, captions, ref", [
    ("clipsr-default-x4", DATA / "lr", DATA / "lr" / "captions.json", DATA / "x4"),
    ("clipsr-default-x8", DATA / "lr", DATA / "lr" / "captions.json", DATA / "x8"),
    ("clipsr-demo-x8", EDITABILITY, EDITABILITY.parent / "captions.json", DATA / "demo-x8"),
])
def test_bundled_model_outputs_match_the_references(tmp_path, model, lr, captions, ref):
    res = CliRunner().invoke(app, ["upscale", str(lr), "--captions", str(captions), "--weights", model,
                                   "-o", str(tmp_path), "-q", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    _compare(tmp_path, ref)
