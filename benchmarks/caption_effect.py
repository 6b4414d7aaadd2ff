"""How much does the caption move a bundled model's output?  Set5 + Set14 (LR by
PIL bicubic downsampling), each image upscaled through `clipsr upscale` with its
own two captions (short, detailed), an unrelated image's caption and an empty
caption; reported: PSNR (Y, crop = scale) between the outputs of two captions
of the same image (higher = the caption moves the output less; identical
outputs would be infinite), and each output's PSNR against the HR.

    python3 benchmarks/caption_effect.py [--weights clipsr-default-x4 clipsr-default-x8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipsr_cli.train.data import to_tensor  # noqa: E402
from stages.metrics.fullref import psnr  # noqa: E402  (the project's PSNR: Y of BT.601, crop border)

SHARED = Path(__file__).resolve().parents[2] / "shared"
BENCH = SHARED / "data" / "sr-bench"


def load(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return to_tensor(im.convert("RGB"))[None]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", nargs="+", default=["clipsr-default-x4", "clipsr-default-x8"])
    p.add_argument("--work", type=Path, default=Path("/tmp/clipsr-caption-effect"))
    args = p.parse_args()
    captions = json.loads((BENCH / "captions.json").read_text())
    keys = sorted(captions)
    print("| model | own short vs own detailed | own vs unrelated image's | own vs empty | "
          "PSNR vs HR: short / detailed / unrelated / empty |")
    print("|---|---|---|---|---|")
    for weights in args.weights:
        scale = int(weights.rsplit("x", 1)[-1])
        work = args.work / weights
        (work / "lr").mkdir(parents=True, exist_ok=True)
        table = {}
        for i, key in enumerate(keys):
            name = key.replace("/", "_")
            hr = Image.open(BENCH / key).convert("RGB")
            hr = hr.crop((0, 0, hr.width - hr.width % scale, hr.height - hr.height % scale))
            hr.save(work / f"hr_{name}")
            hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC).save(work / "lr" / name)
            other = captions[keys[(i + len(keys) // 2) % len(keys)]][0]  # another image's short caption
            table[name] = [*captions[key][:2], other, ""]
        (work / "captions.json").write_text(json.dumps(table))
        subprocess.run([sys.executable, "-m", "clipsr_cli", "upscale", str(work / "lr"), "--captions",
                        str(work / "captions.json"), "--missing-caption", "empty", "--weights", weights, "-o", str(work / "sr"), "-q"], check=True)
        pairs = {"own": [], "unrelated": [], "empty": []}
        vs_hr = [[], [], [], []]
        for name in table:
            stem = Path(name).stem
            outs = [load(work / "sr" / f"{stem}_c{c}.png") for c in range(4)]
            hr = load(work / f"hr_{name}")
            for kind, c in (("own", 1), ("unrelated", 2), ("empty", 3)):
                pairs[kind].append(float(psnr(outs[0], outs[c], scale)[0]))
            for c in range(4):
                vs_hr[c].append(float(psnr(outs[c], hr, scale)[0]))
        m = {k: np.mean(v) for k, v in pairs.items()}
        print(f"| {weights} | {m['own']:.1f} dB | {m['unrelated']:.1f} dB | {m['empty']:.1f} dB | "
              + " / ".join(f"{np.mean(v):.3f}" for v in vs_hr) + " |")


if __name__ == "__main__":
    main()
