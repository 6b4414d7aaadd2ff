"""What each part of the `medium` degradation of real_inputs.py costs, and how much of it a model
wins back: the LR with the blur alone, blur + Gaussian noise, blur + JPEG, and all three (medium),
each scored (PSNR-Y, crop 4, mean over the photos) for bicubic and each model.

    python3 benchmarks/degradation_parts.py [--hr DIR] [--models clipsr-default-x4 clipsr-default-real-x4 ...]

The noise is drawn from the same seeds as real_inputs.py's, so "medium" here is its medium level.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from real_inputs import BENCH, SCALE, degrade, first_captions

import clipsr_cli as clipsr

PARTS = {  # the parts of real_inputs.py's medium level each LR keeps besides the blur
    "blur": {"noise": False, "jpeg": False},
    "blur + noise": {"jpeg": False},
    "blur + JPEG": {"noise": False},
    "medium": {},
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hr", type=Path, default=BENCH)
    p.add_argument("--models", nargs="*", default=["clipsr-default-x4", "clipsr-default-real-x4"])
    args = p.parse_args()
    names = sorted(q for q in (*args.hr.glob("*"), *args.hr.glob("*/*")) if q.suffix.lower() in (".png", ".jpg"))
    captions = first_captions(args.hr)  # as real_inputs.py upscales
    models = {"bicubic": None} | {m: clipsr.load_model(m, device="cpu", precision="fp32") for m in args.models}
    scores: dict[tuple[str, str], list[float]] = {}
    for path in names:
        hr = Image.open(path).convert("RGB")
        hr = hr.crop((0, 0, hr.width - hr.width % SCALE, hr.height - hr.height % SCALE))
        name = path.relative_to(args.hr).as_posix()
        caption = captions.get(name, "")
        for part, keep in PARTS.items():
            lr = degrade(hr, "medium", zlib.crc32(f"medium/{name}".encode()), **keep)  # real_inputs.py's seed
            for label, model in models.items():
                sr = lr.resize(hr.size, Image.BICUBIC) if model is None else model.upscale(lr, caption)
                psnr = clipsr.score(sr, hr, metrics=["psnr"], crop_border=SCALE)["psnr"]
                scores.setdefault((part, label), []).append(psnr)
    labels = [Path(m).stem if m.endswith(".safetensors") else m for m in models]
    print("| LR | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels))
    for part in PARTS:
        print(f"| {part} | " + " | ".join(f"{np.mean(scores[(part, m)]):.2f}" for m in models) + " |")


if __name__ == "__main__":
    main()
