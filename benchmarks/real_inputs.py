"""Real-world inputs: Set5 + Set14 at x4, clean and at three seeded degradation
levels (blur, bicubic x4 down, Gaussian noise, JPEG), scored with PSNR / SSIM
(Y, crop = 4) against the HR and NIQE on the output; for bicubic and each model.

    python3 benchmarks/real_inputs.py [--models clipsr-default-x4 clipsr-default-real-x4] [--work DIR]
    python3 benchmarks/real_inputs.py --hr examples --work /tmp/real-examples   # other photographs
    python3 benchmarks/real_inputs.py --scale 8 --models clipsr-default-x8 --denoise 0.5 1   # the x8 models
    python3 benchmarks/real_inputs.py --models --real-with DENOISE.safetensors   # the real model (auto) with
                                                                  # another denoising model, e.g. a candidate

The degraded LR files are made once into WORK/lr/<level>/ (x8: WORK/lr-x8/<level>/) from fixed
seeds (the same bytes every run) and reused.
"""

from __future__ import annotations

import argparse
import io
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

import clipsr_cli as clipsr

BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr-bench"
SCALE = 4  # the issue's; --scale 8 for the x8 models
LEVELS = {  # blur sigma (HR px), Gaussian noise sigma (8-bit levels), JPEG quality
    "clean": None,
    "mild": (0.8, 2.0, 85),
    "medium": (1.2, 5.0, 60),
    "strong": (1.6, 10.0, 40),
}
# Clean LRs saved as JPEG at a high quality, as a camera or a careful export saves them
# (--levels jpeg90 ...; not run by default): is the real model safe on photos that are clean?
CLEAN_JPEGS = {f"jpeg{q}": (0.0, 0.0, q) for q in (95, 90, 85)}


def degrade(hr: Image.Image, level: str, seed: int, scale: int = SCALE, noise: bool = True,
            jpeg: bool = True) -> Image.Image:
    """The LR of one HR image at one level; the noise drawn from `seed`.  `noise` or `jpeg`
    False leaves that part of the level out (degradation_parts.py)."""
    spec = (LEVELS | CLEAN_JPEGS)[level]
    if spec is not None and spec[0] > 0:
        hr = hr.filter(ImageFilter.GaussianBlur(spec[0]))
    lr = hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC)
    if spec is None or not (noise or jpeg):
        return lr
    arr = np.asarray(lr, np.float64)
    if noise:
        arr = arr + np.random.default_rng(seed).normal(0, spec[1], (lr.height, lr.width, 3))
    out = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    if not jpeg:
        return out
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=spec[2])
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def first_captions(hr_dir: Path) -> dict[str, str]:
    """Each photo's first caption from HR_DIR/captions.json (none: every photo gets "");
    the benchmarks upscale a photo with it."""
    path = hr_dir / "captions.json"
    captions = json.loads(path.read_text()) if path.is_file() else {}
    return {name: c[0] if isinstance(c, list) else c for name, c in captions.items()}


def make_inputs(work: Path, bench: Path, scale: int = SCALE,
                levels=tuple(LEVELS)) -> dict[str, list[tuple[str, Image.Image, Path]]]:
    """(name, HR cropped to a multiple of the scale, LR file) per level."""
    out = {}
    names = sorted(p.relative_to(bench).as_posix() for p in (*bench.glob("*"), *bench.glob("*/*"))  # Set5/x.png
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    for level in levels:
        rows = []
        for name in names:
            hr = Image.open(bench / name).convert("RGB")
            hr = hr.crop((0, 0, hr.width - hr.width % scale, hr.height - hr.height % scale))
            # PNG whatever the HR's format: a .jpg name would save the LR as a JPEG again
            lr_path = (work / ("lr" if scale == SCALE else f"lr-x{scale}") / level / name).with_suffix(".png")
            if not lr_path.is_file():
                lr_path.parent.mkdir(parents=True, exist_ok=True)
                degrade(hr, level, zlib.crc32(f"{level}/{name}".encode()), scale).save(lr_path)
            rows.append((name, hr, lr_path))
        out[level] = rows
    return out


def real_with(denoise_file: Path, scale: int):
    """The real model of `scale` (auto strength) with `denoise_file` as its denoising model."""
    import copy

    import torch

    from clipsr_cli.api import Model
    from clipsr_cli.model.bundled import AUTO, AUTO_TOP, DEFAULT_MODELS, interpolated
    from clipsr_cli.model.checkpoint import load_generator
    from clipsr_cli.model.weights import resolve
    from clipsr_cli.pipeline.auto_denoise import AutoDenoise
    from clipsr_cli.pipeline.upscaler import Upscaler

    clean, real = load_generator(resolve(DEFAULT_MODELS[scale])), load_generator(denoise_file)
    cpu = torch.device("cpu")
    return Model(AutoDenoise(lambda s: Upscaler(interpolated(copy.deepcopy(clean), real, s), cpu), AUTO_TOP[scale]),
                 None, AUTO)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="*", default=["clipsr-default-x4", "clipsr-default-real-x4"])
    p.add_argument("--work", type=Path, default=Path("/tmp/clipsr-real-inputs"))
    p.add_argument("--hr", type=Path, default=BENCH, help="folder of HR photos (+ captions.json): default Set5 + Set14")
    p.add_argument("--levels", nargs="+", default=list(LEVELS), choices=[*LEVELS, *CLEAN_JPEGS])
    p.add_argument("--denoise", nargs="*", type=float, default=[], help="--denoise-strength values to add")
    p.add_argument("--scale", type=int, default=SCALE, choices=[4, 8])
    p.add_argument("--real-with", nargs="*", type=Path, default=[],
                   help="denoising model files: the real model (--denoise-strength auto) with each in place of "
                        "the bundled one")
    args = p.parse_args()
    captions = first_captions(args.hr)
    inputs = make_inputs(args.work, args.hr, args.scale, args.levels)
    models = {"bicubic": None} | {m: clipsr.load_model(m, device="cpu", precision="fp32") for m in args.models}
    models |= {f"denoise-strength {s:g}": clipsr.load_model(denoise_strength=s, scale=args.scale, device="cpu",
                                                               precision="fp32") for s in args.denoise}
    models |= {f"real with {f.stem}": real_with(f, args.scale) for f in args.real_with}
    print("| level | method | PSNR-Y | SSIM-Y | NIQE |\n|---|---|---|---|---|")
    for level in args.levels:
        rows = inputs[level]
        for label, model in models.items():
            scores = []
            for name, hr, lr_path in rows:
                lr = Image.open(lr_path).convert("RGB")
                if model is None:
                    sr = lr.resize(hr.size, Image.BICUBIC)
                else:
                    sr = model.upscale(lr, captions.get(name, ""))
                values = clipsr.score(sr, hr, metrics=["psnr", "ssim"], crop_border=args.scale)
                values |= clipsr.score(sr, metrics=["niqe"], crop_border=args.scale)
                scores.append(values)
            mean = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
            print(f"| {level} | {Path(label).stem if label.endswith('.safetensors') else label} | {mean['psnr']:.2f} | "
                  f"{mean['ssim']:.4f} | {mean['niqe']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
