"""The README's real-world picture: a JPEG-compressed, noisy LR (the `medium`
level of benchmarks/real_inputs.py) upscaled x4 by bicubic, the clean model and
the real-world model, beside the HR; PSNR on Y (crop = 4) under each.

    python3 benchmarks/real_before_after.py ../shared/data/sr-bench/Set14/comic.png --box 0 0 160 160 \\
        --caption "a comic illustration" -o docs/real_before_after.png
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import clipsr_cli as clipsr

_spec = importlib.util.spec_from_file_location("real_inputs", Path(__file__).with_name("real_inputs.py"))
real_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_inputs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("hr", type=Path)
    p.add_argument("--box", type=int, nargs=4, metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"))
    p.add_argument("--caption", required=True)
    p.add_argument("--level", default="medium", choices=[k for k in real_inputs.LEVELS if k != "clean"])
    p.add_argument("--zoom", type=int, default=2)
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args()
    hr = Image.open(args.hr).convert("RGB")
    hr = hr.crop(tuple(args.box)) if args.box else hr
    hr = hr.crop((0, 0, hr.width - hr.width % 4, hr.height - hr.height % 4))
    lr = real_inputs.degrade(hr, args.level, seed=0)
    panels = [("bicubic", lr.resize(hr.size, Image.BICUBIC)),
              ("clean model", clipsr.load_model("clipsr-default-x4", precision="fp32").upscale(lr, args.caption)),
              ("real model", clipsr.load_model("clipsr-default-real-x4", precision="fp32").upscale(lr, args.caption)),
              ("HR", hr)]
    w, h, label = hr.width * args.zoom, hr.height * args.zoom, 18
    canvas = Image.new("RGB", (4 * w + 12, h + label), "white")
    draw = ImageDraw.Draw(canvas)
    said = []
    for i, (name, img) in enumerate(panels):
        canvas.paste(img.resize((w, h), Image.NEAREST), (i * (w + 4), label))
        text = name
        if name != "HR":
            value = clipsr.score(np.asarray(img), np.asarray(hr), metrics=["psnr"], crop_border=4)["psnr"]
            text, _ = f"{name}  {value:.2f} dB", said.append(f"{name} {value:.2f} dB")
        draw.text((i * (w + 4) + 4, 3), text, fill="black")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.output, optimize=True)
    print(f"{args.output}: {args.level} degradation, x4: {', '.join(said)} (PSNR on Y, crop = 4)")


if __name__ == "__main__":
    main()
