"""Which denoise strength each JPEG quality calls for, measured on the training photos
(train-mini), never on a benchmark's: the data behind `--denoise-strength auto`'s
mapping (pipeline/auto_denoise.py).  Each photo, halved (its own JPEG grid gone) and
cropped to a multiple of 4, gets a seeded random degradation of the benchmark's kind
(Gaussian blur, bicubic down, Gaussian noise, a JPEG save; 15% of them left clean);
its LR's quality is read from the pixels, and it is upscaled at strengths 0, 0.25,
0.5, 0.75 and 1 of the bundled pair of the scale.  PSNR-Y (crop = scale) over strength 0, per band of
the quality read, and the strength auto gives there.

    python3 benchmarks/auto_strength.py [--photos N] [--scale 8]
"""

from __future__ import annotations

import argparse
import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

import clipsr_cli as clipsr
from clipsr_cli.model.bundled import AUTO_TOP
from clipsr_cli.pipeline.auto_denoise import auto_strength
from clipsr_cli.pipeline.jpeg_quality import jpeg_quality

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "train-mini"
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
BANDS = ((0, 50), (50, 65), (65, 75), (75, 85), (85, 101))


def degraded(hr: Image.Image, scale: int, rng: np.random.Generator) -> tuple[Image.Image, int | None]:
    """The LR and the JPEG quality it was saved at (None: a clean bicubic downsampling)."""
    if rng.random() < 0.15:
        return hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC), None
    blur, noise, quality = rng.uniform(0.6, 1.6), rng.uniform(0, 10), int(rng.integers(30, 96))
    lr = hr.filter(ImageFilter.GaussianBlur(blur)).resize((hr.width // scale, hr.height // scale), Image.BICUBIC)
    arr = np.asarray(lr, np.float64) + rng.normal(0, noise, (lr.height, lr.width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), quality


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=80)
    p.add_argument("--scale", type=int, default=4, choices=[4, 8])
    args = p.parse_args()
    models = {s: clipsr.load_model(denoise_strength=s, scale=args.scale, device="cpu", precision="fp32") for s in STRENGTHS}
    rows, misread = [], 0
    for path in sorted(TRAIN.glob("*.jpg"))[: args.photos]:
        photo = Image.open(path).convert("RGB")
        hr = photo.resize((photo.width // 2, photo.height // 2), Image.BICUBIC)
        hr = hr.crop((0, 0, hr.width - hr.width % args.scale, hr.height - hr.height % args.scale))
        lr, saved = degraded(hr, args.scale, np.random.default_rng(zlib.crc32(path.name.encode())))
        read = jpeg_quality(np.asarray(lr))
        misread += (read is None) != (saved is None) or (read is not None and abs(read - saved) > 3)
        psnr = [clipsr.score(models[s].upscale(lr), hr, metrics=["psnr"], crop_border=args.scale)["psnr"] for s in STRENGTHS]
        rows.append((read, psnr))
    print(f"{len(rows)} photos; quality read within 3 of the saved one (or none read for clean LRs): "
          f"{len(rows) - misread}\n")
    print("| quality read | photos | " + " | ".join(f"s {s:g}" for s in STRENGTHS) + " | best | auto |")
    print("|---|---|" + "---|" * (len(STRENGTHS) + 2))
    for label, members in [("none", [r for r in rows if r[0] is None])] + [
            (f"{lo}-{hi - 1}", [r for r in rows if r[0] is not None and lo <= r[0] < hi]) for lo, hi in BANDS]:
        if not members:
            continue
        gains = np.mean([r[1] for r in members], axis=0) - np.mean([r[1][0] for r in members])
        auto = np.mean([auto_strength(r[0], AUTO_TOP[args.scale]) for r in members])
        print(f"| {label} | {len(members)} | " + " | ".join(f"{g:+.2f}" for g in gains) +
              f" | {STRENGTHS[int(np.argmax(gains))]:g} | {auto:.2f} |", flush=True)


if __name__ == "__main__":
    main()
