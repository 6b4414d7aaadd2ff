"""The README's before/after picture: LR (nearest) | bicubic | clipsr | HR, with PSNR.

HR: a crop of a public-domain / CC0 image (scikit-image's data files: take them
from its wheel, e.g. `pip download --no-deps scikit-image` and unzip
skimage/data/).  LR by PIL bicubic downsampling; bicubic is PIL's; clipsr runs
the bundled default model (or --weights).

    python3 benchmarks/before_after.py HR.png --box 160 40 416 296 \\
        --caption "a smiling astronaut in a white spacesuit in front of an american flag" -o docs/before_after.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipsr_cli.model.bundled import default_model
from clipsr_cli.model.checkpoint import load_generator
from clipsr_cli.train.data import downsample, to_tensor
from stages.metrics.fullref import psnr


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("hr", type=Path)
    p.add_argument("--box", type=int, nargs=4, metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"))
    p.add_argument("--caption", required=True)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--weights", type=Path)
    p.add_argument("--zoom", type=int, default=2, help="Nearest-neighbour enlargement of every panel.")
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args()

    hr = Image.open(args.hr).convert("RGB")
    if args.box:
        hr = hr.crop(tuple(args.box))
    s = args.scale
    hr = hr.crop((0, 0, hr.width - hr.width % s, hr.height - hr.height % s))
    lr = downsample(hr, s)
    weights = args.weights or default_model(s)[0]
    gen = load_generator(weights)
    with torch.inference_mode():
        sr = gen(to_tensor(lr)[None], gen.encode_text([args.caption])).clamp(0, 1)
    hr_t = to_tensor(hr)[None]
    bic = to_tensor(lr.resize(hr.size, Image.BICUBIC))[None]
    panels = [("LR (nearest)", to_tensor(lr.resize(hr.size, Image.NEAREST))[None], None),
              ("bicubic", bic, float(psnr(bic, hr_t, s)[0])),
              ("clipsr", sr, float(psnr(sr, hr_t, s)[0])),
              ("HR", hr_t, None)]
    w, h = hr.width * args.zoom, hr.height * args.zoom
    label = 18
    canvas = Image.new("RGB", (4 * w + 3 * 4, h + label), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, t, value) in enumerate(panels):
        arr = (t[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(arr).resize((w, h), Image.NEAREST), (i * (w + 4), label))
        text = name if value is None else f"{name}  {value:.2f} dB"
        draw.text((i * (w + 4) + 4, 3), text, fill="black")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.output, optimize=True)
    print(f"{args.output}: x{s}, {', '.join(f'{n} {v:.2f} dB' for n, _, v in panels if v is not None)} "
          "(PSNR on Y, crop = scale)")


if __name__ == "__main__":
    main()
