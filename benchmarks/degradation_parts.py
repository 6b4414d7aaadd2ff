"""What each part of the `medium` degradation of real_inputs.py costs, and how much of it a model
wins back: the LR with the blur alone, blur + Gaussian noise, blur + JPEG, and all three (medium),
each scored (PSNR-Y, crop 4, mean over the photos) for bicubic and each model.

    python3 benchmarks/degradation_parts.py [--hr DIR] [--models clipsr-default-x4 clipsr-default-real-x4 ...]

The noise is drawn from the same seeds as real_inputs.py's, so "medium" here is its medium level.
"""

from __future__ import annotations

import argparse
import io
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from real_inputs import BENCH, LEVELS, SCALE

import clipsr_cli as clipsr

PARTS = ("blur", "blur + noise", "blur + JPEG", "medium")


def lr_variants(hr: Image.Image, seed: int) -> dict[str, Image.Image]:
    blur, sigma, quality = LEVELS["medium"]
    lr = hr.filter(ImageFilter.GaussianBlur(blur)).resize((hr.width // SCALE, hr.height // SCALE), Image.BICUBIC)
    noise = np.random.default_rng(seed).normal(0, sigma, (lr.height, lr.width, 3))

    def saved(noisy: bool, compressed: bool) -> Image.Image:
        arr = np.asarray(lr, np.float64) + (noise if noisy else 0)
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).save(
            buf, format="JPEG" if compressed else "PNG", **({"quality": quality} if compressed else {}))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return {"blur": lr, "blur + noise": saved(True, False), "blur + JPEG": saved(False, True),
            "medium": saved(True, True)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hr", type=Path, default=BENCH)
    p.add_argument("--models", nargs="*", default=["clipsr-default-x4", "clipsr-default-real-x4"])
    args = p.parse_args()
    names = sorted(q for q in (*args.hr.glob("*"), *args.hr.glob("*/*")) if q.suffix.lower() in (".png", ".jpg"))
    captions_file = args.hr / "captions.json"  # as real_inputs.py upscales: with the photo's first caption
    captions = json.loads(captions_file.read_text()) if captions_file.is_file() else {}
    models = {"bicubic": None} | {m: clipsr.load_model(m, device="cpu") for m in args.models}
    scores: dict[tuple[str, str], list[float]] = {}
    for path in names:
        hr = Image.open(path).convert("RGB")
        hr = hr.crop((0, 0, hr.width - hr.width % SCALE, hr.height - hr.height % SCALE))
        name = path.relative_to(args.hr).as_posix()
        caption = captions.get(name, [""])
        caption = caption[0] if isinstance(caption, list) else caption
        for part, lr in lr_variants(hr, zlib.crc32(f"medium/{name}".encode())).items():  # real_inputs.py's seed
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
