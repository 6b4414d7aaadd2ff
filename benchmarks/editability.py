"""The editability picture (paper Fig. 8) from the bundled demo model: each LR
image of `examples/editability/` upscaled x8 once per caption, through the CLI:

    clipsr upscale examples/editability/lr --captions examples/editability/captions.json \\
        --weights clipsr-demo-x8 -o sr-edit
    python3 benchmarks/editability.py            # the same, then docs/editability.png

Row per image: LR (nearest-neighbour enlarged) | the output for each caption
(its PSNR on Y against the HR, crop = 8, underneath) | HR.  The HR is drawn
with the first caption's pattern, so only that output can match it.
`--make` writes `examples/editability/` anew from benchmarks/text_guidance.py's
generator (a seed the demo model never trained on).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.text_guidance import PATTERNS, caption_of, draw  # noqa: E402
from clipsr_cli.train.data import to_tensor  # noqa: E402
from stages.metrics.fullref import psnr  # noqa: E402

EXAMPLES = ROOT / "examples" / "editability"
SCALE, CELL = 8, 192


def make_examples(n: int = 3, seed: int = 7) -> None:
    """LR inputs, their HR and three captions each: the true pattern first, then two others."""
    import random

    from benchmarks.text_guidance import attributes

    rng = random.Random(f"editability/{seed}")
    (EXAMPLES / "lr").mkdir(parents=True, exist_ok=True)
    (EXAMPLES / "hr").mkdir(parents=True, exist_ok=True)
    captions = {}
    for _i in range(n):
        a = attributes(rng) | {"phrasing": 0, "cx": 32.0, "cy": 32.0, "r": 26.0}
        others = rng.sample([p for p in sorted(PATTERNS) if p != a["pattern"]], 2)
        name = f"{a['fg']}_{a['shape']}.png"
        hr = draw(a)
        hr.save(EXAMPLES / "hr" / name)
        hr.resize((hr.width // SCALE, hr.height // SCALE), Image.BICUBIC).save(EXAMPLES / "lr" / name)
        captions[name] = [caption_of(a | {"pattern": p}, 0) for p in [a["pattern"], *others]]
    (EXAMPLES / "captions.json").write_text(json.dumps(captions, indent=2) + "\n")


def load(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return to_tensor(im.convert("RGB"))[None]


def picture(sr_dir: Path, out: Path) -> list[tuple[str, str, float]]:
    captions = json.loads((EXAMPLES / "captions.json").read_text())
    n_caps = max(len(c) for c in captions.values())
    label_h = 58
    sheet = Image.new("RGB", ((n_caps + 2) * CELL, len(captions) * (CELL + label_h) + 24), "white")
    pen = ImageDraw.Draw(sheet)
    heads = ["LR (x8 smaller)", *[f"caption {i}" for i in range(n_caps)], "HR"]
    for col, head in enumerate(heads):
        pen.text((col * CELL + 6, 4), head, fill="black")
    rows = []
    for r, (name, caps) in enumerate(sorted(captions.items())):
        y = 24 + r * (CELL + label_h)
        stem = Path(name).stem
        hr = load(EXAMPLES / "hr" / name)
        tiles = [Image.open(EXAMPLES / "lr" / name).convert("RGB")]
        labels = ["LR"]
        for i, caption in enumerate(caps):
            path = sr_dir / f"{stem}_c{i}.png"
            value = float(psnr(load(path), hr, SCALE)[0])
            rows.append((name, caption, value))
            tiles.append(Image.open(path).convert("RGB"))
            labels.append(f"{value:.2f} dB: " + caption)
        tiles.append(Image.open(EXAMPLES / "hr" / name).convert("RGB"))
        labels.append("HR")
        for col, (tile, label) in enumerate(zip(tiles, labels)):
            sheet.paste(tile.resize((CELL - 8, CELL - 8), Image.NEAREST), (col * CELL + 4, y))
            lines = textwrap.wrap(label, 30)[:4]
            pen.multiline_text((col * CELL + 4, y + CELL - 4), "\n".join(lines), fill="black", spacing=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--make", action="store_true", help="write examples/editability/ anew")
    p.add_argument("--weights", default="clipsr-demo-x8")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "editability.png")
    p.add_argument("--work", type=Path, default=Path("/tmp/clipsr-editability"))
    args = p.parse_args()
    if args.make:
        make_examples()
    sr = args.work / "sr"
    subprocess.run([sys.executable, "-m", "clipsr_cli", "upscale", str(EXAMPLES / "lr"), "--captions",
                    str(EXAMPLES / "captions.json"), "--weights", args.weights, "-o", str(sr), "-q"], check=True)
    for name, caption, value in picture(sr, args.out):
        print(f"{name}: {value:6.2f} dB  {caption}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
