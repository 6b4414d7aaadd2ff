"""Does the caption steer?  Synthetic captioned images whose fine pattern cannot
survive x8 bicubic downsampling and is named only in the caption; trained with
`clipsr train`, upscaled with `clipsr upscale` under the correct caption, the
caption with its pattern changed, and an empty caption; scored with `clipsr
score` (PSNR on Y, crop = scale) against bicubic.  Text margin = correct -
changed.

Each image: a background colour and a large shape (circle, square, triangle,
diamond) drawn in another colour with a pattern at 50% coverage (horizontal,
vertical, rising or falling diagonal stripes, small or large checks), the
background showing between the pattern's marks.  Every pattern's period
divides 8, so every 8x8 LR pixel sees the same mean whatever the pattern: the
LR says where the shape is and both colours, only the caption says which
pattern.  Colours, shape and pattern are independent attributes; two
phrasings of the caption.  Train and test are drawn from disjoint seeds.

    python3 benchmarks/text_guidance.py                      # make data, train, score
    python3 benchmarks/text_guidance.py --make-only DIR      # just the data set
    python3 benchmarks/text_guidance.py --train-args "--lr-g 3e-4"   # an ablation

The training command is the one a user types: `clipsr train --dataset folder
--preset tiny --scale 8 --hr-crop 64 --max-steps N --perceptual-weight 0
--adversarial-weight 0` plus the data folders; everything else comes from
the tiny preset's training defaults.  CPU time (user + system) of the training
process is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 215, 50),
    "white": (245, 245, 245), "black": (20, 20, 20), "orange": (240, 140, 30), "purple": (140, 50, 170),
}
SHAPES = ("circle", "square", "triangle", "diamond")
PATTERNS = {  # name -> 0/1 mask over pixel coordinates (period divides 8: LR means equal)
    "horizontal stripes": lambda x, y: (y // 2) % 2,
    "vertical stripes": lambda x, y: (x // 2) % 2,
    "rising diagonal stripes": lambda x, y: ((x + y) // 2) % 2,  # '/' in image coordinates (y down)
    "falling diagonal stripes": lambda x, y: ((x - y) // 2) % 2,  # '\'
    "small checks": lambda x, y: ((x // 2) + (y // 2)) % 2,
    "large checks": lambda x, y: ((x // 4) + (y // 4)) % 2,
}


def shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (abs(dx) <= r * 0.85) & (abs(dy) <= r * 0.85)
    if shape == "diamond":
        return abs(dx) + abs(dy) <= r * 1.15
    return (dy <= r * 0.8) & (dy >= -r) & (abs(dx) <= (dy + r) * 0.62)  # triangle, apex up


def caption_of(a: dict, phrasing: int) -> str:
    if phrasing == 0:
        return f"a {a['fg']} {a['shape']} of {a['pattern']} on a {a['bg']} background"
    return f"{a['pattern']} in {a['fg']} make a {a['shape']}; the background is {a['bg']}"


def draw(a: dict) -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    pattern = PATTERNS[a["pattern"]](x, y).astype(bool)
    inside = shape_mask(a["shape"], a["cx"], a["cy"], a["r"])
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = COLOURS[a["bg"]]
    img[inside & pattern] = COLOURS[a["fg"]]
    return Image.fromarray(img)


def attributes(rng: random.Random) -> dict:
    fg, bg = rng.sample(sorted(COLOURS), 2)
    return {"shape": rng.choice(SHAPES), "pattern": rng.choice(sorted(PATTERNS)), "fg": fg, "bg": bg,
            "cx": rng.uniform(26, 38), "cy": rng.uniform(26, 38), "r": rng.uniform(20, 27),
            "phrasing": rng.randrange(2)}


def make_dataset(root: Path, n: int, seed: int) -> dict[str, dict]:
    """`n` images in `root` with `captions.json` (one caption each) and
    `attributes.json`; returns the attributes by file name."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"text-guidance/{seed}")
    attrs, captions = {}, {}
    for i in range(n):
        a = attributes(rng)
        name = f"{i:05d}.png"
        draw(a).save(root / name)
        attrs[name], captions[name] = a, caption_of(a, a["phrasing"])
    (root / "captions.json").write_text(json.dumps(captions, indent=0))
    (root / "attributes.json").write_text(json.dumps(attrs, indent=0))
    return attrs


def changed_pattern(a: dict) -> dict:
    """The same attributes with another pattern, chosen deterministically per image."""
    others = [p for p in sorted(PATTERNS) if p != a["pattern"]]
    rng = random.Random(json.dumps(a, sort_keys=True))
    return a | {"pattern": rng.choice(others)}


def make_test(root: Path, n: int, seed: int, scale: int = 8) -> None:
    """HR, LR (PIL bicubic, as `clipsr train` makes it), bicubic back up, and the
    three caption files."""
    attrs = make_dataset(root / "hr", n, seed)
    (root / "lr").mkdir(exist_ok=True)
    (root / "bicubic").mkdir(exist_ok=True)
    for name in attrs:
        hr = Image.open(root / "hr" / name)
        lr = hr.resize((SIZE // scale, SIZE // scale), Image.BICUBIC)
        lr.save(root / "lr" / name)
        lr.resize((SIZE, SIZE), Image.BICUBIC).save(root / "bicubic" / name)
    variants = {"correct": {k: caption_of(a, a["phrasing"]) for k, a in attrs.items()},
                "changed": {k: caption_of(changed_pattern(a), a["phrasing"]) for k, a in attrs.items()},
                "empty": {k: "" for k in attrs}}
    for kind, caps in variants.items():
        (root / f"captions_{kind}.json").write_text(json.dumps(caps, indent=0))


def clipsr(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "clipsr_cli", *args], check=True, stdout=subprocess.DEVNULL)


def psnr(sr: Path, hr: Path, scale: int) -> float:
    report = sr.parent / f"{sr.name}.score.json"
    clipsr("score", str(sr), "--ref", str(hr), "-s", str(scale), "--metrics", "psnr", "--json", str(report))
    rows = json.loads(report.read_text())["images"]
    return sum(r["psnr"] for r in rows) / len(rows)


def train(data: Path, exp: Path, steps: int, extra: list[str]) -> float:
    """`clipsr train` in a child process; returns its CPU seconds (user + system)."""
    cmd = [sys.executable, "-m", "clipsr_cli", "train", "--dataset", "folder", "--data-root", str(data / "train"),
           "--captions", str(data / "train" / "captions.json"), "--preset", "tiny", "--scale", "8",
           "--hr-crop", "64", "--max-steps", str(steps), "--perceptual-weight", "0", "--adversarial-weight", "0",
           "--exp-dir", str(exp), "-q", *extra]
    print("$", shlex.join(cmd[2:]).replace("clipsr_cli", "clipsr", 1), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def evaluate(model: Path, test: Path, out: Path) -> dict[str, float]:
    scores = {"bicubic": psnr(test / "bicubic", test / "hr", 8)}
    for kind in ("correct", "changed", "empty"):
        sr = out / kind
        clipsr("upscale", str(test / "lr"), "--weights", str(model), "--captions", str(test / f"captions_{kind}.json"),
               "--missing-caption", "empty", "-o", str(sr), "-q")
        scores[kind] = psnr(sr, test / "hr", 8)
    scores["margin"] = scores["correct"] - scores["changed"]
    return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/clipsr-text-guidance"))
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--test-images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="data seed (train: seed, test: seed + 1000)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--train-args", default="", help="extra `clipsr train` options (ablations)")
    p.add_argument("--name", default="run", help="experiment name under WORK/runs")
    p.add_argument("--make-only", type=Path, help="write the data set (train/ and test/) here and stop")
    p.add_argument("--model", type=Path, help="score this generator instead of training one")
    args = p.parse_args()
    data = args.make_only or args.work / f"data-v2-{args.seed}-{args.train_images}"
    if not (data / "test" / "captions_empty.json").is_file():
        make_dataset(data / "train", args.train_images, args.seed)
        make_test(data / "test", args.test_images, args.seed + 1000)
    if args.make_only:
        return
    exp = args.work / "runs" / args.name
    cpu = None
    if args.model is None and (exp / "model.safetensors").is_file() and not (exp / "text_guidance.json").exists():
        args.model = exp / "model.safetensors"  # trained, not scored yet
    if args.model is None:
        if exp.exists():
            sys.exit(f"{exp} exists: choose another --name or remove it")
        t0 = time.perf_counter()
        cpu = train(data, exp, args.steps, shlex.split(args.train_args))
        print(f"training: {cpu / 60:.1f} CPU-min, {(time.perf_counter() - t0) / 60:.1f} min wall", flush=True)
    model = args.model or exp / "model.safetensors"
    scores = evaluate(model, data / "test", exp / "outputs")
    scores |= {"cpu_min": cpu / 60 if cpu else None, "steps": args.steps, "train_args": args.train_args,
               "cpu_flags": cpu_flags()}
    (exp / "text_guidance.json").parent.mkdir(parents=True, exist_ok=True)
    (exp / "text_guidance.json").write_text(json.dumps(scores, indent=1))
    print("| correct | changed pattern | empty | bicubic | text margin | CPU-min |")
    print("|---|---|---|---|---|---|")
    print(f"| {scores['correct']:.2f} | {scores['changed']:.2f} | {scores['empty']:.2f} | {scores['bicubic']:.2f} "
          f"| {scores['margin']:+.2f} | {scores['cpu_min'] or 0:.1f} |")


def cpu_flags() -> str:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown"
    found = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f" {f}" in flags]
    return f"{os.cpu_count()} cores, " + (" ".join(found) or "none of amx_bf16/avx512_bf16/avx512f/avx2")


if __name__ == "__main__":
    main()
